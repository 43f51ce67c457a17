"""Skinny GEMM for decode: y[M, N] = f(x)[M, K] @ W[N, K]^T (+ bias) for a few rows (M <= 16).

At batch 1-16 a decode step's linear layers read their whole weight to make a handful of rows:
the time is the weight's bytes over memory bandwidth plus a fixed cost per launch, and cuBLAS's
tiles for these shapes leave bandwidth unused (benchmarks/RESULTS.md). Here each program owns
BLOCK_N output columns for every row and streams its [BLOCK_N, K] slice of W exactly once,
BLOCK_K columns at a time: N / BLOCK_N programs reading disjoint, contiguous rows of W.

The input may be made on the fly from what the step has at hand, which saves the launch (and
the round trip through memory) of the small op that would otherwise make it:
  PROLOGUE_NONE      x as given;
  PROLOGUE_ADD_NORM  x = RMSNorm(hidden + residual) (or RMSNorm(hidden)), with the sum written
                     out as the next residual by program 0 (the decoder's pre-norm step);
  PROLOGUE_SILU_MUL  x = silu(gate) * up from a packed [M, 2K] gate/up projection.
Each prologue rounds exactly where the unfused kernels (rmsnorm.py, activation.py) round, so
the GEMV sees the same bf16 input; only the order of the fp32 sums differs.

Inner products, by BLOCK_M (compile-time): 1 -> multiply-and-reduce in fp32 on a [BLOCK_N,
BLOCK_K] tile; 2 or 4 -> the same over a [BLOCK_M, BLOCK_N, BLOCK_K] broadcast; 16 -> tl.dot of
the rows padded to 16 (tensor cores). Accumulation is fp32; the bias is added in fp32 and the
result rounded once to y's dtype.

Imports torch, triton and kernels.pdl (launched with PDL where it is on).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cormorant.kernels import pdl

MAX_ROWS = 16  # the largest M this kernel serves (one BLOCK_M = 16 tile)
PROLOGUE_NONE, PROLOGUE_ADD_NORM, PROLOGUE_SILU_MUL = 0, 1, 2


@triton.jit
def _input_sum(x_ptr, r_ptr, offs_m, ks, mask, stride_xm, stride_rm,
               HAS_RESIDUAL: tl.constexpr):
    """fp32 values of hidden + residual rounded to the activation dtype (the new residual)."""
    s = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + offs_m[:, None] * stride_rm + ks[None, :], mask=mask, other=0.0)
        s = (s.to(tl.float32) + r.to(tl.float32)).to(r.dtype)
    return s.to(tl.float32)


@triton.jit
def _row_input(x_ptr, r_ptr, nw_ptr, res_out_ptr, ks, mask, rstd, write_residual, K,
               PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ROUND_NORMED: tl.constexpr):
    """(fp32 inputs of one row at positions ks, what an RMSNorm sums the squares of), for the
    quantized GEMVs that read their input at strided positions: PROLOGUE_NONE x;
    PROLOGUE_ADD_NORM s = hidden (+ residual, rounded to the activation dtype: the next
    residual, written where write_residual), normalised as the unfused kernels round it
    (ROUND_NORMED, rstd known) or as s * norm weight (the caller applies 1 / rms to its sums);
    PROLOGUE_SILU_MUL silu(gate) * up rounded to the dtype."""
    if PROLOGUE == 0:
        x = tl.load(x_ptr + ks, mask=mask, other=0.0).to(tl.float32)
        return x, x
    elif PROLOGUE == 1:
        s = tl.load(x_ptr + ks, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + ks, mask=mask, other=0.0)
            s = (s.to(tl.float32) + r.to(tl.float32)).to(r.dtype)
            tl.store(res_out_ptr + ks, s, mask=mask & write_residual)
        nw = tl.load(nw_ptr + ks, mask=mask, other=0.0).to(tl.float32)
        if ROUND_NORMED:
            x = ((s.to(tl.float32) * rstd).to(s.dtype).to(tl.float32) * nw).to(s.dtype)
            return x.to(tl.float32), s.to(tl.float32)
        return s.to(tl.float32) * nw, s.to(tl.float32)
    else:
        g = tl.load(x_ptr + ks, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(x_ptr + ks + K, mask=mask, other=0.0)
        x = (g / (1.0 + tl.exp(-g)) * u.to(tl.float32)).to(u.dtype).to(tl.float32)
        return x, x


@triton.jit
def _skinny_gemm_kernel(x_ptr, r_ptr, nw_ptr, res_out_ptr, w_ptr, b_ptr, y_ptr, M, N, K,
                        stride_xm, stride_rm, stride_om, stride_wn, stride_ym, eps,
                        PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
                        PDL: tl.constexpr, PF_LINES: tl.constexpr, LINE: tl.constexpr):
    """PDL (kernels.pdl): waits for the previous kernel before reading its input; with
    CORMORANT_PDL_PREFETCH=1 the program's weight rows (PF_LINES lines of LINE elements each)
    are asked of the L2 first."""
    pid = tl.program_id(0)
    dtype = y_ptr.dtype.element_ty
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    pdl.prefetch_rows(w_ptr, offs_n, N, K, stride_wn, PF_LINES, LINE, PDL)
    pdl.wait(PDL)
    if PROLOGUE == 1:  # RMSNorm statistics first: every program reads the (small) rows
        sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            s = _input_sum(x_ptr, r_ptr, offs_m, ks, mask_m[:, None] & (ks[None, :] < K),
                           stride_xm, stride_rm, HAS_RESIDUAL)
            sq += tl.sum(s * s, axis=1)
        rstd = tl.rsqrt(sq / K + eps)
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]  # [BN, BK]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        if EVEN_K:
            xmask = mask_m[:, None]
        else:
            xmask = mask_m[:, None] & (ks[None, :] < K)
        if PROLOGUE == 0:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :], mask=xmask, other=0.0)
        elif PROLOGUE == 1:
            s = _input_sum(x_ptr, r_ptr, offs_m, ks, xmask, stride_xm, stride_rm, HAS_RESIDUAL)
            if HAS_RESIDUAL:  # program 0 writes the sum: the next layer's residual
                tl.store(res_out_ptr + offs_m[:, None] * stride_om + ks[None, :], s.to(dtype),
                         mask=xmask & (pid == 0))
            nw = tl.load(nw_ptr + ks, mask=ks < K, other=0.0).to(tl.float32)
            x = ((s * rstd[:, None]).to(dtype).to(tl.float32) * nw[None, :]).to(dtype)
        else:
            g_ptrs = x_ptr + offs_m[:, None] * stride_xm + ks[None, :]
            g = tl.load(g_ptrs, mask=xmask, other=0.0).to(tl.float32)
            u = tl.load(g_ptrs + K, mask=xmask, other=0.0).to(tl.float32)
            x = (g / (1.0 + tl.exp(-g)) * u).to(dtype)
        if EVEN_N and EVEN_K:
            w = tl.load(w_ptrs)
        else:
            w = tl.load(w_ptrs, mask=mask_n[:, None] & (ks[None, :] < K), other=0.0)
        if BLOCK_M == 1:
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32), axis=1)[None, :]
        elif BLOCK_M < 16:
            acc += tl.sum(w.to(tl.float32)[None, :, :] * x.to(tl.float32)[:, None, :], axis=2)
        else:
            acc += tl.dot(x, tl.trans(w))
        w_ptrs += BLOCK_K
    pdl.launch_dependents(PDL)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(dtype), mask=mask_m[:, None] & mask_n[None, :])


def block_m_for(m: int) -> int:
    assert 1 <= m <= MAX_ROWS, f"{m} rows: the skinny GEMM serves 1 to {MAX_ROWS}"
    return 1 if m == 1 else 2 if m == 2 else 4 if m <= 4 else MAX_ROWS


def pick_config(m: int, n: int, k: int, prologue: int = PROLOGUE_NONE) -> dict:
    """Tile sizes and launch settings for one shape, from benchmarks/gemv_probe.py sweeps on
    an H100 (RESULTS.md). M = 1, plain: one weight row per program (within 5% of the best
    config of every Qwen3-0.6B and Llama-3.1-8B projection). With a prologue each program
    re-reads the input rows, so it takes several weight rows to amortise them (the best of
    eight settings in a layer chain: 4 x 2048 for K >= 4096, 8 x 1024 below). M > 1 rows are
    served but, as measured, no faster than cuBLAS (layers.linear routes only M = 1 here)."""
    block_m = block_m_for(m)
    block_k = min(1024, triton.next_power_of_2(k))
    if block_m == 1:
        if prologue == PROLOGUE_NONE:
            return dict(BLOCK_M=1, BLOCK_N=1, BLOCK_K=block_k, num_warps=2, num_stages=4)
        if k >= 4096:
            return dict(BLOCK_M=1, BLOCK_N=4, BLOCK_K=2048, num_warps=4, num_stages=2)
        return dict(BLOCK_M=1, BLOCK_N=8, BLOCK_K=block_k, num_warps=8, num_stages=3)
    if block_m < MAX_ROWS:
        return dict(BLOCK_M=block_m, BLOCK_N=8, BLOCK_K=block_k, num_warps=4, num_stages=3)
    return dict(BLOCK_M=MAX_ROWS, BLOCK_N=32, BLOCK_K=min(256, block_k), num_warps=4,
                num_stages=4)


def _launch(prologue: int, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            out: torch.Tensor | None, config: dict | None, k: int,
            residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
            eps: float = 0.0, residual_out: torch.Tensor | None = None) -> torch.Tensor:
    m = x.shape[0]
    n = weight.shape[0]
    assert 1 <= m <= MAX_ROWS and weight.shape[1] == k, (x.shape, weight.shape)
    assert x.stride(1) == 1 and weight.stride(1) == 1
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    cfg = dict(config or pick_config(m, n, k, prologue))
    block_n, block_k = cfg["BLOCK_N"], cfg["BLOCK_K"]
    assert cfg["BLOCK_M"] >= m
    _skinny_gemm_kernel[(triton.cdiv(n, block_n),)](
        x, residual if residual is not None else x,
        norm_weight if norm_weight is not None else weight,
        residual_out if residual_out is not None else out, weight,
        bias if bias is not None else weight, out, m, n, k,
        x.stride(0), residual.stride(0) if residual is not None else 0,
        residual_out.stride(0) if residual_out is not None else 0,
        weight.stride(0), out.stride(0), eps,
        PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
        EVEN_N=n % block_n == 0, EVEN_K=k % block_k == 0,
        **pdl.row_lines(k, weight.element_size()), **pdl.launch_options(x.device), **cfg)
    return out


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """x [M, K] (M <= 16, rows contiguous) @ weight [N, K]^T (+ bias [N]) -> [M, N]."""
    return _launch(PROLOGUE_NONE, x, weight, bias, out, config, x.shape[1])


def add_rms_norm_gemm(hidden: torch.Tensor, residual: torch.Tensor | None,
                      norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                      bias: torch.Tensor | None = None, config: dict | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(hidden + residual) @ weight^T (+ bias), hidden + residual) in one launch; with
    residual None, (RMSNorm(hidden) @ weight^T, hidden). Inputs are not modified."""
    k = hidden.shape[1]
    assert norm_weight.shape == (k,)
    residual_out = None
    if residual is not None:
        assert residual.shape == hidden.shape and residual.stride(1) == 1
        residual_out = torch.empty_like(hidden)
    y = _launch(PROLOGUE_ADD_NORM, hidden, weight, bias, None, config, k, residual=residual,
                norm_weight=norm_weight, eps=eps, residual_out=residual_out)
    return y, (residual_out if residual_out is not None else hidden)


def silu_mul_gemm(gate_up: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """(silu(gate) * up) @ weight^T (+ bias) for gate_up [M, 2K] = cat(gate, up)."""
    assert gate_up.shape[1] % 2 == 0
    return _launch(PROLOGUE_SILU_MUL, gate_up, weight, bias, None, config,
                   gate_up.shape[1] // 2)


# -- references (plain PyTorch) ---------------------------------------------------------------
def skinny_gemm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """fp32 products and sums, one rounding."""
    y = x.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def add_rms_norm_gemm_ref(hidden: torch.Tensor, residual: torch.Tensor | None,
                          norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                          bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from cormorant.kernels.rmsnorm import fused_add_rms_norm_ref, rms_norm_ref
    if residual is None:
        normed, total = rms_norm_ref(hidden, norm_weight, eps), hidden
    else:
        normed, total = fused_add_rms_norm_ref(hidden, residual, norm_weight, eps)
    return skinny_gemm_ref(normed, weight, bias), total


def silu_mul_gemm_ref(gate_up: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    from cormorant.kernels.activation import silu_and_mul_ref
    return skinny_gemm_ref(silu_and_mul_ref(gate_up), weight, bias)
