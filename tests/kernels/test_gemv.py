"""The decode GEMV (kernels/gemv.py) against its references: every inner product (M = 1, the
broadcast path for 2-4 rows, tl.dot for up to 16), each prologue (none, residual add + RMSNorm,
SiLU-and-multiply), ragged N and K (masked tiles), with and without bias. bf16 runs only on the
paths without tl.dot here: the CPU interpreter's tl.dot is wrong for bf16, and its fp32 -> bf16
casts inside a kernel truncate instead of rounding to nearest, so the prologues' intermediate
roundings may land one ulp low; bf16 tolerances allow for that (the GPU check,
benchmarks/gemv_probe.py, compares bf16 at real sizes with real rounding)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels import gemv  # noqa: E402


def _cfg(m: int) -> dict:
    return dict(BLOCK_M=gemv.block_m_for(m), BLOCK_N=16, BLOCK_K=32, num_warps=4, num_stages=1)


def _close(y: torch.Tensor, ref: torch.Tensor) -> None:
    if y.dtype == torch.float32:
        torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    else:  # the same sums in another order; inputs may sit one (truncated) ulp apart
        assert ((y.float() - ref.float()).abs() <= ref.float().abs() * 2**-5 + 3e-2).all()


def _inputs(m, n, k, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(device, dtype)
    b = torch.randn(n, generator=gen).to(device, dtype)
    return gen, x, w, b


@pytest.mark.parametrize("m", [1, 2, 3, 16])
@pytest.mark.parametrize("n,k", [(64, 128), (33, 100)])
@pytest.mark.parametrize("bias", [False, True])
def test_plain_gemv_matches_the_reference_fp32(m, n, k, bias, device):
    _, x, w, b = _inputs(m, n, k, torch.float32, device, m * 1000 + n + k)
    b = b if bias else None
    out = torch.full((m, n), float("nan"), device=device)
    y = gemv.skinny_gemm(x, w, b, out=out, config=_cfg(m))
    assert y is out and not y.isnan().any()
    _close(y, gemv.skinny_gemm_ref(x, w, b))


@pytest.mark.parametrize("m,dtype", [(1, torch.float32), (3, torch.float32),
                                     (16, torch.float32), (1, torch.bfloat16),
                                     (2, torch.bfloat16), (4, torch.bfloat16)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_norm_prologue_matches_norm_then_gemv(m, dtype, with_residual, device):
    n, k = 40, 96
    gen, x, w, b = _inputs(m, n, k, dtype, device, 7 + m)
    residual = torch.randn(m, k, generator=gen).to(device, dtype) if with_residual else None
    norm_w = (torch.rand(k, generator=gen) + 0.5).to(device, dtype)
    x0 = x.clone()
    r0 = residual.clone() if residual is not None else None
    y, new_res = gemv.add_rms_norm_gemm(x, residual, norm_w, 1e-6, w, b, config=_cfg(m))
    ref_y, ref_res = gemv.add_rms_norm_gemm_ref(x0, r0, norm_w, 1e-6, w, b)
    assert torch.equal(x, x0) and (residual is None or torch.equal(residual, r0))  # untouched
    if dtype == torch.float32:
        assert torch.equal(new_res, ref_res)  # the sum is made exactly as the norm kernel does
    else:  # one bf16 ulp: the interpreter truncates
        assert ((new_res.float() - ref_res.float()).abs() <= ref_res.float().abs() * 2**-7).all()
    _close(y, ref_y)


@pytest.mark.parametrize("m,dtype", [(1, torch.float32), (4, torch.float32),
                                     (16, torch.float32), (1, torch.bfloat16),
                                     (3, torch.bfloat16)])
def test_silu_mul_prologue_matches_activation_then_gemv(m, dtype, device):
    n, k = 48, 80
    gen, _, w, b = _inputs(m, n, k, dtype, device, 11 + m)
    gate_up = (torch.randn(m, 2 * k, generator=gen) * 2).to(device, dtype)
    y = gemv.silu_mul_gemm(gate_up, w, b, config=_cfg(m))
    _close(y, gemv.silu_mul_gemm_ref(gate_up, w, b))


def test_strided_rows_and_the_default_configs(device):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 256, generator=gen).to(device, torch.bfloat16)
    x = base[:1, 64:]  # a view with row stride 256: only the last dim must be contiguous
    w = torch.randn(48, 192, generator=gen).to(device, torch.bfloat16)
    _close(gemv.skinny_gemm(x, w), gemv.skinny_gemm_ref(x, w))
    for m in range(1, 17):
        cfg = gemv.pick_config(m, 4096, 1024)
        assert cfg["BLOCK_M"] >= m and cfg["BLOCK_K"] <= 1024
    with pytest.raises(AssertionError):
        gemv.skinny_gemm(torch.zeros(17, 8), torch.zeros(8, 8))
