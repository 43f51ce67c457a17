"""The decode GEMV (kernels/gemv.py) against its fp32 reference: both inner products (M = 1
multiply-and-reduce, M > 1 tl.dot), ragged N and K (masked tiles), with and without bias.
bf16 runs only on the M = 1 path here: the CPU interpreter's tl.dot is wrong for bf16 (the GPU
check, benchmarks/gemv_probe.py, covers bf16 at real sizes)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels.gemv import pick_config, skinny_gemm, skinny_gemm_ref  # noqa: E402


@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("n,k", [(64, 128), (40, 96), (33, 100)])
@pytest.mark.parametrize("bias", [False, True])
def test_skinny_gemm_matches_the_reference_fp32(m, n, k, bias, device):
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen).to(device)
    w = torch.randn(n, k, generator=gen).to(device)
    b = torch.randn(n, generator=gen).to(device) if bias else None
    cfg = dict(BLOCK_M=1 if m == 1 else 16, BLOCK_N=16, BLOCK_K=32, num_warps=4, num_stages=1)
    out = torch.full((m, n), float("nan"), device=device)
    y = skinny_gemm(x, w, b, out=out, config=cfg)
    assert y is out and not y.isnan().any()
    torch.testing.assert_close(y, skinny_gemm_ref(x, w, b), atol=1e-4, rtol=1e-4)


def test_skinny_gemm_bf16_single_row_and_strided_input(device):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(2, 256, generator=gen).to(device).bfloat16()
    x = base[:1, 64:]  # a view with row stride 256: only the last dim must be contiguous
    w = torch.randn(48, 192, generator=gen).to(device).bfloat16()
    y = skinny_gemm(x, w, config=dict(BLOCK_M=1, BLOCK_N=16, BLOCK_K=64, num_warps=4,
                                      num_stages=1))
    ref = skinny_gemm_ref(x, w)
    # Same fp32 sum in another order, one bf16 rounding each: at most one ulp apart.
    assert ((y.float() - ref.float()).abs() <= ref.float().abs() * 2**-7 + 1e-3).all()


def test_default_config_is_valid_for_every_row_count():
    for m in range(1, 17):
        cfg = pick_config(m, 4096, 1024)
        assert cfg["BLOCK_M"] >= m and cfg["BLOCK_K"] <= 1024
    with pytest.raises(AssertionError):
        skinny_gemm(torch.zeros(17, 8), torch.zeros(8, 8))
