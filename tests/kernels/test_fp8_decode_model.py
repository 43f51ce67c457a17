"""FP8 weights through the GPU code paths of a whole model, on the CPU: a tiny Qwen3 quantized
at load (`--quantization fp8`) runs a prefill and decode steps with layers.fp8_linear's kernel
rule widened to the CPU in fp32 (Triton interpreter), and gives the logits of its
dequantize-then-matmul reference path. Batch-1 decode steps take the FP8 GEMV with the residual
add + RMSNorm and SiLU-and-multiply folded in; the prefill and 3-row steps take the Triton
GEMM (the GPU would take _scaled_mm for these per-channel scales: its activation quantization
is checked against its reference in test_fp8_gemm.py and on the GPU by benchmarks/fp8_probe.py)."""
from __future__ import annotations

import pytest
import torch

from cormorant.config import ModelConfig
from cormorant.kernels import load as load_kernels
from cormorant.layers import fp8_linear
from cormorant.layers.attention import TorchAttention
from cormorant.models import quantization
from cormorant.models.random_init import build_random_model
from tests.models.model_test_utils import PagedRunner


def _run(model, config, monkeypatch, widen: bool):
    if widen:
        monkeypatch.setattr(fp8_linear, "KERNEL_DEVICE_TYPES", ("cuda", "cpu"))
        monkeypatch.setattr(fp8_linear, "GEMV_DTYPES", (torch.float32,))
    calls = []
    kernels = load_kernels("fp8_gemm")
    # wide tiles: the interpreter's cost is per program (the GPU's one-row tiles are slow here)
    monkeypatch.setattr(kernels, "gemv_config", lambda m, k, per_row, prologue=0: dict(
        BLOCK_M=1, BLOCK_N=32, BLOCK_K=64, num_warps=4, num_stages=1))
    for name in ("fp8_gemv", "fp8_gemm", "fp8_add_rms_norm_gemv", "fp8_silu_mul_gemv"):
        real = getattr(kernels, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, args[0].shape[0]))
            return _real(*args, **kwargs)
        monkeypatch.setattr(kernels, name, spy)
    runner = PagedRunner(model, config, num_seqs=3, max_len=16)
    out = [runner.step({0: [5, 9, 11], 1: [7, 3], 2: [1, 2, 4, 8]})]
    for step in ({0: [7]}, {0: [8], 1: [9], 2: [10]}):
        out.append(runner.step(step))
    monkeypatch.undo()
    return out, calls


def _fp8_model(seed: int):
    """A tiny random Qwen3 (fp32, CPU) with its 8 projections quantized to FP8 at load."""
    config = ModelConfig(architecture="Qwen3ForCausalLM", qk_norm=True, vocab_size=96,
                         hidden_size=64, intermediate_size=80, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, max_position_embeddings=128)
    model = build_random_model(config, torch.float32, "cpu", seed=seed, std=0.2,
                               attn_backend=TorchAttention())
    assert quantization.quantize_dense(model, quantization.plan(None, "fp8")) == 8
    return config, model


def test_fp8_model_through_the_kernels_matches_its_reference_path(monkeypatch):
    config, model = _fp8_model(seed=1)
    reference, none = _run(model, config, monkeypatch, widen=False)
    assert none == []  # on the CPU the reference path runs
    fused, calls = _run(model, config, monkeypatch, widen=True)
    for ref_step, step in zip(reference, fused):
        for seq in ref_step:
            torch.testing.assert_close(step[seq], ref_step[seq], atol=1e-4, rtol=1e-4)
    layers = config.num_layers
    assert calls.count(("fp8_add_rms_norm_gemv", 1)) == 2 * layers  # qkv and gate_up
    assert calls.count(("fp8_silu_mul_gemv", 1)) == layers  # down
    assert calls.count(("fp8_gemv", 1)) == layers  # o_proj
    assert {m for name, m in calls if name == "fp8_gemm"} == {9, 3}  # prefill, 3-row step


def test_the_gemv_prologue_switch_runs_the_plain_gemv_with_the_same_logits(monkeypatch):
    """CORMORANT_FP8_GEMV_PROLOGUE=0: batch-1 steps take the norm and SiLU as their own
    kernels and the plain FP8 GEMV for all four projections, with the fused path's logits."""
    config, model = _fp8_model(seed=3)
    fused, _ = _run(model, config, monkeypatch, widen=True)
    monkeypatch.setattr(fp8_linear, "GEMV_PROLOGUE", False)
    plain, calls = _run(model, config, monkeypatch, widen=True)
    for ref_step, step in zip(fused, plain):
        for seq in ref_step:
            torch.testing.assert_close(step[seq], ref_step[seq], atol=1e-4, rtol=1e-4)
    assert calls.count(("fp8_gemv", 1)) == 4 * config.num_layers
    assert not any(name.endswith(("norm_gemv", "mul_gemv")) for name, _ in calls)


@pytest.mark.parametrize("route", ["scaled_mm", "w8a8"])
def test_rows_for_fp8_tensor_cores_fold_the_norm_and_silu_into_the_quantization(monkeypatch,
                                                                                route):
    """Rows that take torch._scaled_mm or the Triton W8A8 tiles (here every multi-row step: the
    W8A16 tiles are capped at one row; _scaled_mm's rowwise check is widened to the CPU, where
    it runs for real, or CORMORANT_FP8_A8_ROWS routes the rows to fp8_scaled_gemm) get the
    residual add + RMSNorm and SiLU-and-multiply folded into their activation quantization
    (add_rms_norm_quantize, silu_mul_quantize): the logits of the unfused path (the norm, then
    quantize_rows), which CORMORANT_FP8_QUANT_PROLOGUE=0 keeps, within 1e-4 (on the CPU the
    unfused norm is PyTorch's, whose fp32 sums round differently: 5e-6 apart here; on the GPU
    both are kernels.rmsnorm's numerics, and the kernel test compares the codes bit for bit)."""
    config, model = _fp8_model(seed=2)
    quant, gemm = load_kernels("fp8_quant"), load_kernels("fp8_gemm")
    results = {}
    for fold in (False, True):
        monkeypatch.setattr(fp8_linear, "FP8_GEMM_MAX_ROWS", 1)
        if route == "w8a8":
            monkeypatch.setattr(fp8_linear, "FP8_A8_MAX_ROWS", 512)
        else:
            monkeypatch.setattr(fp8_linear, "scaled_mm_rowwise", lambda x: True)
        monkeypatch.setattr(fp8_linear, "QUANT_PROLOGUE", fold)
        quantized = []
        for module, name in ((quant, "quantize_rows"), (quant, "add_rms_norm_quantize"),
                             (quant, "silu_mul_quantize"), (gemm, "fp8_scaled_gemm")):
            real = getattr(module, name)

            def spy(*args, _real=real, _name=name, **kwargs):
                quantized.append((_name, args[0].shape[0]))
                return _real(*args, **kwargs)
            monkeypatch.setattr(module, name, spy)
        out, calls = _run(model, config, monkeypatch, widen=True)
        results[fold] = out, calls, quantized
    (plain, plain_calls, plain_q), (folded, calls, q) = results[False], results[True]
    for ref_step, step in zip(plain, folded):
        for seq in ref_step:
            torch.testing.assert_close(step[seq], ref_step[seq], atol=1e-4, rtol=1e-4)
    layers = config.num_layers
    assert not any(name == "fp8_gemm" for name, _ in calls)  # many rows: FP8 tensor cores
    a8_calls = 4 * layers if route == "w8a8" else 0
    for rows in (9, 3):  # the prefill and the 3-row step
        assert q.count(("fp8_scaled_gemm", rows)) == plain_q.count(("fp8_scaled_gemm", rows))
        assert q.count(("fp8_scaled_gemm", rows)) == a8_calls
        assert q.count(("add_rms_norm_quantize", rows)) == 2 * layers  # qkv and gate_up
        assert q.count(("silu_mul_quantize", rows)) == layers  # down
        assert q.count(("quantize_rows", rows)) == layers  # o_proj: its input is attention's
        assert plain_q.count(("quantize_rows", rows)) == 4 * layers
    assert ("fp8_add_rms_norm_gemv", 1) in calls  # one row: still the GEMV's prologue
