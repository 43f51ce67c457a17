"""Skinny GEMM for decode: y[M, N] = x[M, K] @ W[N, K]^T (+ bias) for a few rows (M <= 16).

At batch 1-16 a decode step's linear layers read their whole weight to make a handful of rows:
the time is the weight's bytes over memory bandwidth, and cuBLAS's tiles for these shapes leave
part of it unused (benchmarks/RESULTS.md). Here each program owns BLOCK_N output columns for
every row and streams its [BLOCK_N, K] slice of W exactly once, BLOCK_K columns at a time, so
the grid is N / BLOCK_N programs reading disjoint, contiguous rows of W.

Two inner products, picked by BLOCK_M (a compile-time constant):
  BLOCK_M == 1   multiply-and-reduce on the CUDA cores in fp32 (M = 1: no wasted rows);
  BLOCK_M == 16  tl.dot of the rows padded to 16 against the W tile (tensor cores).
Accumulation is fp32; the bias is added in fp32 and the result rounded once to y's dtype.

Imports only torch and triton.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 16  # the largest M this kernel serves (one BLOCK_M = 16 tile)


@triton.jit
def _skinny_gemm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]  # [BN, BK]
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]  # [BM, BK]
    if BLOCK_M == 1:
        acc = tl.zeros((1, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_N and EVEN_K:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=mask_n[:, None] & (offs_k[None, :] + k0 < K), other=0.0)
        if EVEN_K:
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        else:
            x = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] + k0 < K), other=0.0)
        if BLOCK_M == 1:
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32), axis=1)[None, :]
        else:
            acc += tl.dot(x, tl.trans(w))
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def pick_config(m: int, n: int, k: int) -> dict:
    """Tile sizes and launch settings for one shape (measured on an H100: RESULTS.md)."""
    block_m = 1 if m == 1 else MAX_ROWS
    block_k = min(512 if m == 1 else 256, triton.next_power_of_2(k))
    block_n = 16 if m > 1 else (8 if n <= 2048 else 16)
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=3)


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """x [M, K] (M <= 16, rows contiguous) @ weight [N, K]^T (+ bias [N]) -> [M, N]."""
    m, k = x.shape
    n = weight.shape[0]
    assert 1 <= m <= MAX_ROWS and weight.shape[1] == k
    assert x.stride(1) == 1 and weight.stride(1) == 1
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    cfg = dict(config or pick_config(m, n, k))
    block_n, block_k = cfg["BLOCK_N"], cfg["BLOCK_K"]
    grid = (triton.cdiv(n, block_n),)
    _skinny_gemm_kernel[grid](
        x, weight, bias if bias is not None else weight, out, m, n, k,
        x.stride(0), weight.stride(0), out.stride(0), HAS_BIAS=bias is not None,
        EVEN_N=n % block_n == 0, EVEN_K=k % block_k == 0, **cfg)
    return out


def skinny_gemm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Plain PyTorch reference: fp32 products and sums, one rounding."""
    y = x.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
