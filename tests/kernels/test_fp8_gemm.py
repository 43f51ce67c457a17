"""The FP8 weight kernels (kernels/fp8_gemm.py) against their PyTorch reference under the
interpreter: per-channel and block scales (ragged blocks at the N and K edges), the GEMV's
one-row and few-row paths, the GEMM's tl.dot tiles over ragged M/N/K, with and without bias.
fp32 activations: the CPU interpreter's tl.dot is wrong for bf16 (see test_gemv.py)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels import fp8_gemm  # noqa: E402


def _inputs(m, n, k, scale_n, group_k, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(fp8_gemm.FP8_DTYPE)
    s = torch.rand(-(-n // scale_n), -(-k // group_k), generator=gen) * 0.01 + 1e-3
    b = torch.randn(n, generator=gen)
    return x.to(device), w.to(device), s.to(device), b.to(device)


LAYOUTS = [(1, None), (16, 32), (8, 16)]  # (scale_n, group_k): per-channel, blocks


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("scale_n,group_k", LAYOUTS)
@pytest.mark.parametrize("bias", [False, True])
def test_fp8_gemv_matches_the_dequantized_reference(m, scale_n, group_k, bias, device):
    n, k = 40, 72  # neither a multiple of the block: the last blocks are partial
    group_k = group_k or k
    x, w, s, b = _inputs(m, n, k, scale_n, group_k, device, m + n + scale_n)
    b = b if bias else None
    cfg = dict(BLOCK_M=1 if m == 1 else 4, BLOCK_N=8, BLOCK_K=32, num_warps=4, num_stages=1)
    y = fp8_gemm.fp8_gemv(x, w, s, scale_n, group_k, b, config=cfg)
    ref = fp8_gemm.fp8_matmul_ref(x, w, s, scale_n, group_k, b)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m", [5, 33])
@pytest.mark.parametrize("scale_n,group_k", LAYOUTS)
def test_fp8_gemm_matches_the_dequantized_reference(m, scale_n, group_k, device):
    n, k = 40, 80
    group_k = group_k or k
    x, w, s, b = _inputs(m, n, k, scale_n, group_k, device, 3 * m + group_k)
    cfg = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=1)
    y = fp8_gemm.fp8_gemm(x, w, s, scale_n, group_k, b, config=cfg)
    torch.testing.assert_close(y, fp8_gemm.fp8_matmul_ref(x, w, s, scale_n, group_k, b),
                               atol=1e-3, rtol=1e-4)


def test_dequantize_ref_scales_each_block():
    w = torch.ones(3, 5).to(fp8_gemm.FP8_DTYPE)
    s = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # blocks of 2 rows x 2 columns
    assert torch.equal(fp8_gemm.dequantize_ref(w, s, 2, 2), torch.tensor(
        [[1.0, 1, 2, 2, 3], [1, 1, 2, 2, 3], [4, 4, 5, 5, 6]]))
