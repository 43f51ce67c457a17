"""The compiled CPU decode step (runner.cpu_compile).

A tiny Llama served by LLM with the compile on (CORMORANT_CPU_COMPILE=1, enforce_eager off)
must give greedy tokens identical to the same model with enforce_eager, for a lone sequence
(the batch-1 graphs) and three at once (the dynamic batch graph), over contexts that cross
block boundaries, and its decode steps (only those) must have run the compiled layers, with
the attention as one opaque op (runner.cpu_attention_op).
"""
from __future__ import annotations

import torch

from cormorant.frontend.llm import LLM
from cormorant.runner.cpu_attention_op import OpaqueAttention
from cormorant.runner.cpu_compile import (ENV_SWITCH, CompiledLayer, cpu_compile_enabled,
                                          decoder_layers)
from cormorant.sampling_params import SamplingParams


def test_compile_switch_follows_enforce_eager_and_the_environment(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    assert not cpu_compile_enabled(cpu, enforce_eager=False)  # opt-in
    monkeypatch.setenv(ENV_SWITCH, "1")
    assert cpu_compile_enabled(cpu, enforce_eager=False)
    assert not cpu_compile_enabled(cpu, enforce_eager=True)
    assert not cpu_compile_enabled(torch.device("meta"), enforce_eager=False)
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert not cpu_compile_enabled(cpu, enforce_eager=False)


def _greedy(llm: LLM, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]


def test_compiled_decode_gives_the_eager_greedy_tokens(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_SWITCH, "1")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    prompts = [[5 + i, 40, 41 + i, 7, 99, 100 + 3 * i, 12] for i in range(3)]
    eager = LLM(tiny_llama, block_size=4, num_kv_blocks=64, enforce_eager=True)
    assert eager.engine.runner.compiled is None
    expected_one = _greedy(eager, prompts[:1], 14)
    expected_three = _greedy(eager, prompts, 14)
    del eager
    compiled = LLM(tiny_llama, block_size=4, num_kv_blocks=64, enforce_eager=False)
    runner = compiled.engine.runner
    assert runner.compiled is not None
    layers = decoder_layers(runner.model)
    assert all(isinstance(layer, CompiledLayer) for layer in layers)
    calls = []  # the number of query rows of each compiled layer call
    step = runner.compiled.step
    for layer in layers:
        layer._step = lambda *args: calls.append(args[2].shape[0]) or step(*args)
    assert _greedy(compiled, prompts[:1], 14) == expected_one
    assert _greedy(compiled, prompts, 14) == expected_three
    # 13 decode steps of one row, then 13 of three, through each of the 2 layers; the
    # prompts (7 tokens a row) ran eagerly.
    assert sorted(calls) == [1] * 26 + [3] * 26
    assert all(isinstance(layer.layer.self_attn.attn_backend, OpaqueAttention)
               for layer in layers)


def test_int4_matmul_under_compile_is_the_eager_kernel_exactly():
    from cormorant.layers.gguf_linear import int4pack_mm_compiled

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (96, 64), dtype=torch.int32, generator=g)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales_zeros = torch.randn(2, 96, 2, generator=g).to(torch.bfloat16)
    x = torch.randn(3, 64, generator=g).to(torch.bfloat16)

    def f(x):
        return int4pack_mm_compiled(x * 2, packed, 32, scales_zeros) + 1

    eager = torch.ops.aten._weight_int4pack_mm_for_cpu(x * 2, packed, 32, scales_zeros) + 1
    assert torch.equal(torch.compile(f, fullgraph=True)(x), eager)
