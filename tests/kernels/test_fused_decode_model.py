"""The decode GEMV wired into the models (layers.linear's rule and its deferred norm and SiLU
inputs, the LM head): tiny Llama, Qwen2 (qkv bias) and Qwen3 (q/k norm) decode steps of 1 and 3
sequences give the logits of the unfused layers, and longer batches never take the kernel path.
A LinearMethod that does not offer the fused prologues gets the unfused layers instead.

The rule admits only CUDA, bf16/fp16 and batch 1; here it is widened to the CPU in fp32 and to
4 rows so the kernels (and their multi-row paths) run under the Triton interpreter (the GPU runs, benchmarks/gpu_engine_check.py, check bf16
greedy output against transformers)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cormorant.config import ModelConfig
from cormorant.kernels import load as load_kernels
from cormorant.layers import linear
from cormorant.layers.linear import LinearBase, LinearMethod
from cormorant.layers.attention import TorchAttention
from cormorant.models.random_init import build_random_model
from tests.models.model_test_utils import PagedRunner

ARCHS = {
    "llama": dict(architecture="LlamaForCausalLM"),
    "qwen2": dict(architecture="Qwen2ForCausalLM", attention_bias=True),
    "qwen3": dict(architecture="Qwen3ForCausalLM", qk_norm=True, tie_word_embeddings=True),
}


def _config(arch: str) -> ModelConfig:
    return ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=80, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=128,
                       **ARCHS[arch])


def _run(model, config, monkeypatch, widen: bool):
    """Prefill 3 prompts, then decode steps of 1 and 3 sequences; logits per step."""
    if widen:
        monkeypatch.setattr(linear, "GEMV_DEVICE_TYPES", ("cuda", "cpu"))
        monkeypatch.setattr(linear, "GEMV_DTYPES", (torch.float32,))
        monkeypatch.setattr(linear, "DECODE_MAX_ROWS", 4)
    calls = []
    gemv = load_kernels("gemv")
    for name in ("skinny_gemm", "add_rms_norm_gemm", "silu_mul_gemm"):
        real = getattr(gemv, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, args[0].shape[0]))
            return _real(*args, **kwargs)
        monkeypatch.setattr(gemv, name, spy)
    runner = PagedRunner(model, config, num_seqs=3, max_len=24)
    gen = torch.Generator().manual_seed(3)
    prompts = {s: torch.randint(0, config.vocab_size, (5 + s,), generator=gen).tolist()
               for s in range(3)}
    out = [runner.step(prompts)]  # 18 rows: never the kernel path
    steps = [{0: [7]}, {0: [8], 1: [9], 2: [10]}, {1: [11]}]
    for step in steps:
        out.append(runner.step(step))
    monkeypatch.undo()
    return out, calls


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_decode_steps_through_the_gemv_match_the_unfused_layers(arch, monkeypatch):
    config = _config(arch)
    model = build_random_model(config, torch.float32, "cpu", seed=1, std=0.2,
                               attn_backend=TorchAttention())
    reference, none = _run(model, config, monkeypatch, widen=False)
    assert none == []  # the rule keeps fp32 CPU runs on F.linear
    fused, calls = _run(model, config, monkeypatch, widen=True)
    for ref_step, step in zip(reference, fused):
        for seq in ref_step:
            torch.testing.assert_close(step[seq], ref_step[seq], atol=2e-5, rtol=2e-5)
    rows = {m for _, m in calls}
    assert rows == {1, 3}  # the decode steps only, never the 18-row prefill
    per_step = config.num_layers * 2  # two norm+projection fusions per layer
    names = [n for n, _ in calls]
    assert names.count("add_rms_norm_gemm") == 3 * per_step
    assert names.count("silu_mul_gemm") == 3 * config.num_layers
    # o_proj in every layer, plus the LM head of every step
    assert names.count("skinny_gemm") == 3 * (config.num_layers + 1)


class TransposedScaledMethod(LinearMethod):
    """A toy non-dense format: the weight stored transposed, [in, out], and divided by SCALE.
    It implements only create_weights and apply, so it offers no fused prologue."""

    SCALE = 2.0

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int) -> None:
        layer.weight_t = nn.Parameter(torch.empty(input_size, output_size), requires_grad=False)

    def apply(self, layer, x, bias):
        y = (x @ layer.weight_t) * self.SCALE
        return y if bias is None else y + bias


def _restore_in_toy_format(model: nn.Module) -> int:
    """Re-store every projection of a dense model in the toy format (as an offline quantizer
    would); returns how many layers changed format."""
    toy, count = TransposedScaledMethod(), 0
    for module in model.modules():
        if isinstance(module, LinearBase):
            dense = module.weight.data
            del module.weight  # no dense weight left for a fused path to read
            toy.create_weights(module, dense.shape[1], dense.shape[0])
            module.weight_t.data = (dense.t() / toy.SCALE).contiguous()
            module.method = toy
            count += 1
    return count


def test_a_method_without_fused_prologues_runs_the_unfused_layers(monkeypatch):
    """Same widened rule as above: with the toy format no projection takes the GEMV (only
    the LM head, which is not a LinearBase), and the logits are the dense model's."""
    config = _config("qwen2")
    model = build_random_model(config, torch.float32, "cpu", seed=1, std=0.2,
                               attn_backend=TorchAttention())
    reference, _ = _run(model, config, monkeypatch, widen=False)
    assert _restore_in_toy_format(model) == 4 * config.num_layers  # qkv, o, gate_up, down
    toy, calls = _run(model, config, monkeypatch, widen=True)
    for ref_step, step in zip(reference, toy):
        for seq in ref_step:
            torch.testing.assert_close(step[seq], ref_step[seq], atol=2e-5, rtol=2e-5)
    assert calls == [("skinny_gemm", 1), ("skinny_gemm", 3), ("skinny_gemm", 1)]
