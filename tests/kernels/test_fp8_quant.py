"""The FP8 activation quantizers (kernels/fp8_quant.py) against their references: quantize_rows
equals layers.fp8_linear's quantize_activations (one pass and two, static and per-token
scales), and the folded forms (add + RMSNorm, SiLU-and-multiply) give the codes of the unfused
kernels followed by quantize_rows, bit for bit."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels import fp8_quant  # noqa: E402


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("k", [64, 1500])  # one block; several blocks with a ragged end
@pytest.mark.parametrize("one_pass", [True, False])  # the row held in registers, or read twice
def test_quantize_rows_kernel_equals_the_pytorch_quantization(static, k, one_pass, device,
                                                               monkeypatch):
    """The one-launch activation quantization of the _scaled_mm path: the same scales and the
    same e4m3 codes as quantize_activations (its reference), bit for bit; a zero row gets the
    floor scale, the static scale clips the large rows."""
    from cormorant.layers.fp8_linear import quantize_activations

    monkeypatch.setattr(fp8_quant, "QUANT_ONE_PASS_K", 2048 if one_pass else 32)
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(6, k, generator=gen) * torch.tensor([1, 10, 300, 0.01, 0, 1e4])[:, None]
    x = x.to(device)
    input_scale = torch.tensor([0.05], device=device) if static else None
    q, s = fp8_quant.quantize_rows(x, input_scale)
    q_ref, s_ref = quantize_activations(x, input_scale)
    assert q.dtype == fp8_quant.FP8_DTYPE and s.shape == (6, 1)
    assert torch.equal(s, s_ref)
    differ = q.view(torch.uint8) != q_ref.view(torch.uint8)
    if x.device.type == "cuda":
        assert not differ.any()
    else:  # the interpreter's fp32 -> e4m3 cast rounds some values down in magnitude (a
        # binade short where rounding up crosses a power of two, 125.6 -> 64; subnormals
        # truncated, 0.0108 -> 0.0098): only such may differ here; on the GPU the codes are
        # compared bit for bit (this test under CUDA, benchmarks/gpu_wave2.sh)
        got, want = q.float()[differ], q_ref.float()[differ]
        assert ((got.abs() < want.abs()) & (got * want >= 0)).all()
        assert ((got.abs() >= want.abs() / 2) | (want.abs() <= 2.0 ** -9)).all()
        assert differ.float().mean() < 0.1


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_quantize_equals_the_norm_then_quantize_rows(static, with_residual, dtype,
                                                                 device):
    """The fused prologue of the FP8 layer's many-row path: the codes and scales that
    kernels.rmsnorm followed by quantize_rows give, bit for bit, and hidden + residual as the
    unfused kernel leaves it; the inputs are not modified."""
    from cormorant.kernels import rmsnorm

    gen = torch.Generator().manual_seed(7)
    k = 160  # not a power of two: a masked tail
    hidden = (torch.randn(5, k, generator=gen) * 3).to(dtype).to(device)
    residual = (torch.randn(5, k, generator=gen) * 3).to(dtype).to(device)
    weight = (torch.rand(k, generator=gen) + 0.5).to(dtype).to(device)
    input_scale = torch.tensor([0.02], device=device) if static else None
    before = hidden.clone(), residual.clone()
    q, s, total = fp8_quant.add_rms_norm_quantize(
        hidden, residual if with_residual else None, weight, 1e-6, input_scale)
    assert torch.equal(hidden, before[0]) and torch.equal(residual, before[1])
    h, r = hidden.clone(), residual.clone()
    if with_residual:
        rmsnorm.fused_add_rms_norm(h, r, weight, 1e-6)  # h: the normed rows, r: the sum
        assert torch.equal(total, r)
    else:
        h = rmsnorm.rms_norm(h, weight, 1e-6)
        assert total is hidden
    q_ref, s_ref = fp8_quant.quantize_rows(h, input_scale)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


@pytest.mark.parametrize("static", [False, True])
def test_silu_mul_quantize_equals_the_activation_then_quantize_rows(static, device):
    from cormorant.kernels import activation

    gen = torch.Generator().manual_seed(8)
    gate_up = (torch.randn(4, 2 * 96, generator=gen) * 4).to(torch.bfloat16).to(device)
    input_scale = torch.tensor([0.05], device=device) if static else None
    q, s = fp8_quant.silu_mul_quantize(gate_up, input_scale)
    q_ref, s_ref = fp8_quant.quantize_rows(activation.silu_and_mul(gate_up), input_scale)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
