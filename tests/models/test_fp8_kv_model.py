"""The FP8 KV cache through whole models (torch backend): logits against the same model with
an fp32 and a bf16 cache, and the checkpoint's KV scales loaded in each spelling.

Tolerances, measured on the tiny random models of tests/tiny.py (weights N(0, 0.2): sharp
attention, flat output distributions, so a small perturbation flips near-tied argmaxes):
teacher-forced over 3 sequences x (16-token prefill + 16 decode steps), the fp8 cache moves
the logits by 9.3% (Llama) and 6.0% (Qwen3) of their norm, 18x and 16x what a bf16 cache does
(e4m3 keeps 3 mantissa bits to bf16's 7: 16x), and keeps 85% and 94% of the top-1 tokens.
Asserted: relative error < 0.15, < 40x the bf16 cache's, top-1 agreement >= 0.75.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from model_test_utils import PagedRunner
from safetensors.torch import save_file

from cormorant.layers.kv_quant import FP8_DTYPE
from cormorant.models.loader import load_model

SEQS, PREFILL, DECODE = 3, 16, 16


def _teacher_forced_logits(model, config, cache_dtype, tokens: list[list[int]]
                           ) -> torch.Tensor:
    """[seqs * len, vocab]: a PREFILL-token prefill, then one decode step per further token."""
    seqs, total = len(tokens), len(tokens[0])
    runner = PagedRunner(model, config, seqs, total, dtype=cache_dtype)
    first = runner.step({i: tokens[i][:PREFILL] for i in range(seqs)})
    steps = [runner.step({i: [tokens[i][t]] for i in range(seqs)})
             for t in range(PREFILL, total)]
    return torch.cat([torch.cat([first[i]] + [s[i] for s in steps]) for i in range(seqs)])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_fp8_cache_logits_close_to_full_precision(family, tiny_llama, tiny_qwen3):
    path = tiny_llama if family == "llama" else tiny_qwen3
    model, config = load_model(path, "float32")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, config.vocab_size, (SEQS, PREFILL + DECODE), generator=gen)
    exact = _teacher_forced_logits(model, config, torch.float32, tokens.tolist())
    bf16 = _teacher_forced_logits(model, config, torch.bfloat16, tokens.tolist())
    fp8 = _teacher_forced_logits(model, config, FP8_DTYPE, tokens.tolist())
    err, err_bf16 = _rel(fp8, exact), _rel(bf16, exact)
    top1 = float((fp8.argmax(-1) == exact.argmax(-1)).float().mean())
    print(f"{family}: fp8 cache rel err {err:.4f} (bf16 cache {err_bf16:.4f}), top-1 {top1:.3f}")
    assert err < 0.15 and top1 >= 0.75
    assert err_bf16 < err < 40 * err_bf16  # quantization noise of e4m3's size, not a bug


def _with_scales(src: str, dst, tensors: dict[str, torch.Tensor]) -> str:
    """A copy of checkpoint `src` with extra tensors in a shard of their own."""
    shutil.copytree(src, dst)
    save_file(tensors, str(dst / "kv_scales.safetensors"))
    return str(dst)


SPELLINGS = {  # layer 0's and 1's scales, each as one checkpoint format writes them
    "fp8-checkpoint": lambda i, k, v: {f"model.layers.{i}.self_attn.k_proj.k_scale": k,
                                       f"model.layers.{i}.self_attn.v_proj.v_scale": v},
    "compressed-tensors": lambda i, k, v: {f"model.layers.{i}.self_attn.k_scale": k,
                                           f"model.layers.{i}.self_attn.v_scale": v},
    "kv_scale": lambda i, k, v: {f"model.layers.{i}.self_attn.kv_scale": k},
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_checkpoint_kv_scales_are_loaded(spelling, tiny_llama, tmp_path):
    scales = {0: (0.03125, 0.25), 1: (0.5, 0.0625)}
    tensors: dict[str, torch.Tensor] = {}
    for layer, (k, v) in scales.items():
        tensors.update(SPELLINGS[spelling](layer, torch.tensor([k]), torch.tensor(v)))
    model, _ = load_model(_with_scales(tiny_llama, tmp_path / "m", tensors), "float32")
    for layer, (k, v) in scales.items():
        kv = model.model.layers[layer].self_attn.kv_scales
        assert kv.k_scale.dtype == torch.float32 and float(kv.k_scale) == k
        assert float(kv.v_scale) == (k if spelling == "kv_scale" else v)
    plain, _ = load_model(tiny_llama, "float32")
    assert float(plain.model.layers[0].self_attn.kv_scales.k_scale) == 1.0  # none: 1.0


def test_checkpoint_scales_used_on_write_and_read(tiny_llama, tmp_path):
    """Power-of-two scales move values up the e4m3 range; written and read with the same
    scale, the logits stay as close to the fp32 cache's as with scale 1 (a scale applied on
    one side only would be off by its factor)."""
    tensors = {f"model.layers.{i}.self_attn.{w}_proj.{w}_scale": torch.tensor(1 / 32)
               for i in range(2) for w in "kv"}
    scaled, config = load_model(_with_scales(tiny_llama, tmp_path / "m", tensors), "float32")
    plain, _ = load_model(tiny_llama, "float32")
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, config.vocab_size, (2, PREFILL + 8), generator=gen)
    exact = _teacher_forced_logits(plain, config, torch.float32, tokens.tolist())
    unit = _teacher_forced_logits(plain, config, FP8_DTYPE, tokens.tolist())
    with_scales = _teacher_forced_logits(scaled, config, FP8_DTYPE, tokens.tolist())
    assert _rel(with_scales, exact) < 1.2 * _rel(unit, exact) < 0.2


@pytest.mark.parametrize("tensor,message", [
    (torch.tensor([0.5, 0.5]), "one value per layer"),
    (torch.tensor(-1.0), "positive and finite"),
    (torch.tensor(float("inf")), "positive and finite"),
])
def test_bad_kv_scale_fails_at_load(tensor, message, tiny_llama, tmp_path):
    path = _with_scales(tiny_llama, tmp_path / "m",
                        {"model.layers.1.self_attn.k_proj.k_scale": tensor})
    with pytest.raises(ValueError, match=rf"model\.layers\.1\.self_attn\.k_proj\.k_scale.*"
                                         rf"{message}"):
        load_model(path, "float32")
