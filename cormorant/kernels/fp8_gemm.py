"""FP8 (e4m3) weight matmuls in Triton: a decode GEMV and a tiled GEMM that dequantize in-kernel.

Both compute y[M, N] = x[M, K] @ (W[N, K] * S)^T (+ bias) with W in float8_e4m3fn and S the
weight scales in one layout for every FP8 format: S[ceil(N / scale_n), ceil(K / group_k)]
fp32, so that weight (n, k) is scaled by S[n // scale_n, k // group_k]:
  per-channel (and per-tensor, expanded per row at load)  scale_n = 1,   group_k = K;
  block-wise (quant_method "fp8", weight_block_size)      scale_n = 128, group_k = 128.
x stays in its own dtype (bf16 on the GPU) in the weight-only kernels (W8A16); the FP8
tensor-core paths with quantized activations are fp8_scaled_gemm and torch._scaled_mm (chosen
in layers.fp8_linear).

  fp8_gemv  a few rows (decode): each program owns BLOCK_N output columns for every row and
            streams its [BLOCK_N, K] slice of W once, one byte per weight (half of bf16's);
            like kernels.gemv it may make its input on the fly (fp8_add_rms_norm_gemv: the
            residual add + RMSNorm; fp8_silu_mul_gemv: SiLU-and-multiply), one launch for two.
  fp8_gemm  any M: [BLOCK_M, BLOCK_N] tiles, tl.dot on the dequantized [BLOCK_K, BLOCK_N]
            tile; BLOCK_K divides group_k, so each K step has one scale per output column
            (SWAP, opt-in: the tile computed transposed, the weights as the first operand).
  fp8_scaled_gemm  the same tiles with the activations quantized too (W8A8): FP8 x FP8
            tensor-core products, the row scales applied at the end, split-K; opt-in for
            tuning (on the H100 its best swept tiles took 1.5-2.3x torch._scaled_mm's time
            at 128 rows, 0.9-1.9x at 16, and 1.3-2.8x the W8A16 tiles' at 16-32).
The activations of the W8A8 paths are quantized by kernels.fp8_quant.
Accumulation is fp32; per-channel scales are applied once at the end (PER_ROW), block scales
per K step. References in plain PyTorch are beside them.
Imports torch, triton and kernels.gemv (its prologue helper and codes), kernels.split_k (the
in-launch reduction, its counters), kernels.e4m3, kernels.pdl and kernels.fp8_quant (the dtype).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from cormorant.kernels import e4m3, pdl, split_k
from cormorant.kernels.e4m3 import e4m3_to_bf16
from cormorant.kernels.fp8_quant import FP8_DTYPE
from cormorant.kernels.gemv import (PROLOGUE_ADD_NORM, PROLOGUE_NONE, PROLOGUE_SILU_MUL,
                                    _input_sum)

# CORMORANT_FP8_ACC2D=1: the one-row GEMV reduces its products once, not per K step (see
# _fp8_gemv_kernel); off: B2 Llama-3.1-8B FP8 took 4.33 ms/token with it against 3.59 (H100,
# 2026-12-07): twice the registers, half the programs per SM.
ACC2D_GEMV = os.environ.get("CORMORANT_FP8_ACC2D", "0") == "1"
GEMM_SPLIT_ROWS = 64  # rows up to which the GEMM takes 64-wide tiles and splits K
# The few-row W8A16 GEMM splits K until about this many programs per SM run (each split at
# least 4 K steps long). CORMORANT_FP8_GEMM_PER_SM sets it, for tuning. 2 measured best (H100,
# 2026-12-07 11:30, `gpu_wave5.sh persm`): 4 gained 1 us on qkv at 16 rows but lost 11 on
# gate_up at 32 (55.6 -> 66.9 us), and B3 1000/1000 fell from 4,222 to 3,964 tok/s.
GEMM_PROGRAMS_PER_SM = int(os.environ.get("CORMORANT_FP8_GEMM_PER_SM", "2"))
# CORMORANT_FP8_GEMM_OPAQUE=1: the W8A16 tiles' conversion declared impure (OPAQUE in
# _fp8_gemm_kernel; fewer instructions, more registers). Off until a card times it.
GEMM_OPAQUE = os.environ.get("CORMORANT_FP8_GEMM_OPAQUE", "0") == "1"


@triton.jit
def _fp8_gemv_kernel(x_ptr, r_ptr, nw_ptr, res_out_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K,
                     stride_xm, stride_rm, stride_om, stride_wn, stride_sn, stride_ym, eps,
                     SCALE_N: tl.constexpr, GROUP_K: tl.constexpr, PER_ROW: tl.constexpr,
                     PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, ACC2D: tl.constexpr, PDL: tl.constexpr,
                     PF_LINES: tl.constexpr, LINE: tl.constexpr):
    """ACC2D (one row): products accumulate elementwise in fp32 [BLOCK_N, BLOCK_K] and are
    summed across threads once at the end, not once per K step (a shared-memory reduction
    with barriers each step: 300 -> 236 instructions a step on sm_90, but 63 -> 123
    registers, so half the programs per SM: slower in B2, off). PDL (kernels.pdl): waits for
    the previous kernel before reading its input; with CORMORANT_PDL_PREFETCH=1 the program's
    weight rows (PF_LINES lines of LINE bytes each) are asked of the L2 first."""
    pid = tl.program_id(0)
    dtype = y_ptr.dtype.element_ty
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    pdl.prefetch_rows(w_ptr, offs_n, N, K, stride_wn, PF_LINES, LINE, PDL)
    pdl.wait(PDL)
    if PROLOGUE == 1:  # RMSNorm statistics first, as kernels.gemv does
        sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            s = _input_sum(x_ptr, r_ptr, offs_m, ks, mask_m[:, None] & (ks[None, :] < K),
                           stride_xm, stride_rm, HAS_RESIDUAL)
            sq += tl.sum(s * s, axis=1)
        rstd = tl.rsqrt(sq / K + eps)
    s_rows = s_ptr + (offs_n // SCALE_N) * stride_sn  # [BN]
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_1 = tl.zeros((BLOCK_N, BLOCK_K if ACC2D else 1), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        kmask = ks < K
        xmask = mask_m[:, None] & kmask[None, :]
        if PROLOGUE == 0:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :], mask=xmask,
                        other=0.0)
        elif PROLOGUE == 1:
            s = _input_sum(x_ptr, r_ptr, offs_m, ks, xmask, stride_xm, stride_rm, HAS_RESIDUAL)
            if HAS_RESIDUAL:  # program 0 writes the sum: the next layer's residual
                tl.store(res_out_ptr + offs_m[:, None] * stride_om + ks[None, :], s.to(dtype),
                         mask=xmask & (pid == 0))
            nw = tl.load(nw_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
            x = ((s * rstd[:, None]).to(dtype).to(tl.float32) * nw[None, :]).to(dtype)
        else:
            g_ptrs = x_ptr + offs_m[:, None] * stride_xm + ks[None, :]
            g = tl.load(g_ptrs, mask=xmask, other=0.0).to(tl.float32)
            u = tl.load(g_ptrs + K, mask=xmask, other=0.0).to(tl.float32)
            x = (g / (1.0 + tl.exp(-g)) * u).to(dtype)
        x = x.to(tl.float32)
        w = tl.load(w_ptrs, mask=mask_n[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        if not PER_ROW:
            s = tl.load(s_rows[:, None] + (ks // GROUP_K)[None, :],
                        mask=mask_n[:, None] & kmask[None, :], other=0.0)
            w = w * s
        if BLOCK_M == 1 and ACC2D:
            acc_1 += w * x
        elif BLOCK_M == 1:
            acc += tl.sum(w * x, axis=1)[None, :]
        else:
            acc += tl.sum(w[None, :, :] * x[:, None, :], axis=2)
        w_ptrs += BLOCK_K
    pdl.launch_dependents(PDL)
    if BLOCK_M == 1 and ACC2D:
        acc = tl.sum(acc_1, axis=1)[None, :]
    if PER_ROW:
        acc = acc * tl.load(s_rows, mask=mask_n, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(dtype), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _fp8_gemm_kernel(x_ptr, xs_ptr, w_ptr, s_ptr, b_ptr, y_ptr, p_ptr, lock_ptr, M, N, K,
                     K_PER_SPLIT, stride_xm, stride_wn, stride_sn, stride_ym,
                     SCALE_N: tl.constexpr, GROUP_K: tl.constexpr, PER_ROW: tl.constexpr,
                     HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K, IEEE: tl.constexpr,
                     BITS: tl.constexpr, A8: tl.constexpr, SWAP: tl.constexpr = False,
                     FAST_ACC: tl.constexpr = False, OPAQUE: tl.constexpr = False):
    """[BLOCK_M, BLOCK_N] tiles over K_PER_SPLIT of K (split-K: the partials are summed in the
    launch by split_k.finish, in split order). BITS: W's codes are read as uint8 and made
    bf16 by kernels.e4m3 (exact; bf16 x on Hopper), instead of Triton's conversions. A8: x is
    e4m3 codes too, with one scale per row at xs_ptr: FP8 x FP8 tensor-core products, fp32
    sums of one K step, no conversion at all (W8A8). SWAP: the tile is computed transposed,
    acc[BLOCK_N, BLOCK_M] = W_tile @ x_tile^T, so the weights are the dot's first operand (on
    sm_90 a wgmma reads that one from registers, where the conversion left it; as the second
    it goes through shared memory) and a few rows fill its N side (a wgmma's M side is at
    least 64; its N side may be 16). FAST_ACC (W8A8, per-row scales; opt-in, for measuring):
    the FP8 tensor cores accumulate all of K in their reduced-precision adders, as cuBLAS's
    fast accumulation does, instead of each K step's sums being added in fp32. OPAQUE (BITS;
    opt-in, for measuring): the conversion is declared impure, so that Triton lays the dot out
    for 16-bit data rather than for the 8-bit codes it would trace it back to (kernels.e4m3's
    e4m3_to_f16 says why): x takes ldmatrix instead of 64-bit loads and register moves, W
    goes through shared memory as bf16 (sm_90, 32 rows: 421 -> 314 loop instructions, 96 ->
    159 registers)."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)  # grouped ordering: neighbouring programs share W tiles
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_begin = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)
    offs_k = k_begin + tl.arange(0, BLOCK_K)
    mask_m, mask_n = offs_m < M, offs_n < N
    s_cols = s_ptr + (offs_n // SCALE_N) * stride_sn  # [BN]
    if SWAP:  # x^T [BK, BM] and W [BN, BK]
        x_ptrs = x_ptr + offs_m[None, :].to(tl.int64) * stride_xm + offs_k[:, None]
        w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:  # x [BM, BK] and W^T [BK, BN]
        x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
        w_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        kmask = (k0 + tl.arange(0, BLOCK_K)) < k_end
        if SWAP:
            x = tl.load(x_ptrs, mask=kmask[:, None] & mask_m[None, :], other=0.0)
            w_mask = mask_n[:, None] & kmask[None, :]
        else:
            x = tl.load(x_ptrs, mask=mask_m[:, None] & kmask[None, :], other=0.0)
            w_mask = kmask[:, None] & mask_n[None, :]
        if BITS:
            w = e4m3_to_bf16(tl.load(w_ptrs, mask=w_mask, other=0), OPAQUE)
        else:
            w = tl.load(w_ptrs, mask=w_mask, other=0.0)
        if A8:  # W8A8: FP8 x FP8 products; SWAP gives acc[BN, BM]
            if FAST_ACC:  # per-row scales: the tensor cores keep all of K in acc
                if SWAP:
                    acc = tl.dot(w, x, acc)
                else:
                    acc = tl.dot(x, w, acc)
            else:  # each step's sums apart, then added to acc in fp32 (on sm_90 Triton
                # otherwise lets the tensor cores keep all of K in their reduced-precision
                # adders, as FAST_ACC does)
                if SWAP:
                    step = tl.dot(w, x, max_num_imprecise_acc=BLOCK_K)
                else:
                    step = tl.dot(x, w, max_num_imprecise_acc=BLOCK_K)
                if not PER_ROW:
                    s_k = tl.load(s_cols + k0 // GROUP_K, mask=mask_n, other=0.0)
                    if SWAP:
                        step = step * s_k[:, None]
                    else:
                        step = step * s_k[None, :]
                acc += step
        elif SWAP:
            if not PER_ROW:
                w = w.to(tl.float32) * tl.load(s_cols + k0 // GROUP_K, mask=mask_n,
                                                other=0.0)[:, None]
            if IEEE:
                acc += tl.dot(w.to(tl.float32), x, input_precision="ieee")
            else:
                acc += tl.dot(w.to(x.dtype), x)
        else:
            if not PER_ROW:
                w = w.to(tl.float32) * tl.load(s_cols + k0 // GROUP_K, mask=mask_n,
                                                other=0.0)[None, :]
            if IEEE:  # fp32 activations: exact products (tf32 would round them on the GPU)
                acc += tl.dot(x, w.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(x, w.to(x.dtype))
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if SWAP:
        acc = tl.trans(acc)  # [BLOCK_M, BLOCK_N], as the plain tiles leave it
    if PER_ROW:
        acc = acc * tl.load(s_cols, mask=mask_n, other=0.0)[None, :]
    if A8:
        acc = acc * tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)[:, None]
    if HAS_BIAS:  # added by the first split only: the partials' sum counts it once
        acc += tl.load(b_ptr + offs_n, mask=mask_n & (pid_k == 0), other=0.0).to(
            tl.float32)[None, :]
    split_k.finish(acc, y_ptr, offs_m[:, None] * stride_ym + offs_n[None, :], p_ptr,
                   offs_m[:, None] * N + offs_n[None, :], M * N, lock_ptr, pid, pid_k,
                   mask_m[:, None] & mask_n[None, :], SPLIT_K, 0.0, p_ptr, 0, K, 0.0, False)


def _check(x: torch.Tensor, k: int, weight: torch.Tensor, scale: torch.Tensor, scale_n: int,
           group_k: int) -> None:
    n = weight.shape[0]
    assert weight.dtype == FP8_DTYPE and weight.shape[1] == k, (x.shape, weight.shape)
    assert x.stride(1) == 1 and weight.stride(1) == 1 and scale.stride(1) == 1
    assert scale.dtype == torch.float32
    assert scale.shape == (triton.cdiv(n, scale_n), triton.cdiv(k, group_k)), scale.shape


def gemv_config(m: int, k: int, per_row: bool, prologue: int = PROLOGUE_NONE) -> dict:
    """Tiles of the GEMV. M = 1 from `benchmarks/fp8_probe.py --sweep` on an H100
    (2026-12-06, Llama-3.1-8B's projections, per-row scales): plain, 4 weight rows a program
    in K steps of 2048 (o 8.8 -> 8.2 us, down 23.5 -> 22.3, gate_up 42.3 -> ~41); with the
    add + RMSNorm prologue every program re-reads (and normalises) the input row, so each
    takes 8 weight rows (qkv 12.7 us, gate_up 43.3). Block scales are gathered per element,
    a few rows per program."""
    block_m = 1 if m == 1 else triton.next_power_of_2(m)
    p2k = triton.next_power_of_2(k)
    if m == 1 and prologue != PROLOGUE_NONE:
        if k >= 4096:
            return dict(BLOCK_M=1, BLOCK_N=8 if prologue == PROLOGUE_ADD_NORM else 4,
                        BLOCK_K=2048, num_warps=4,
                        num_stages=4 if prologue == PROLOGUE_ADD_NORM else 2)
        return dict(BLOCK_M=1, BLOCK_N=8, BLOCK_K=min(1024, p2k), num_warps=8, num_stages=3)
    if m == 1 and per_row:
        return dict(BLOCK_M=1, BLOCK_N=4, BLOCK_K=min(2048, p2k), num_warps=4, num_stages=4)
    return dict(BLOCK_M=block_m, BLOCK_N=4, BLOCK_K=min(1024 if m == 1 else 256, p2k),
                num_warps=2 if m == 1 else 4, num_stages=4)


def _launch_gemv(prologue: int, x: torch.Tensor, k: int, weight: torch.Tensor,
                 scale: torch.Tensor, scale_n: int, group_k: int, bias: torch.Tensor | None,
                 config: dict | None, residual: torch.Tensor | None = None,
                 norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                 residual_out: torch.Tensor | None = None) -> torch.Tensor:
    m, n = x.shape[0], weight.shape[0]
    _check(x, k, weight, scale, scale_n, group_k)
    per_row = scale.shape[1] == 1
    cfg = dict(config or gemv_config(m, k, per_row, prologue))
    acc2d = cfg.pop("ACC2D", ACC2D_GEMV)
    assert cfg["BLOCK_M"] >= m
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    _fp8_gemv_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
        x, residual if residual is not None else x,
        norm_weight if norm_weight is not None else scale,
        residual_out if residual_out is not None else y, weight, scale,
        bias if bias is not None else scale, y, m, n, k, x.stride(0),
        residual.stride(0) if residual is not None else 0,
        residual_out.stride(0) if residual_out is not None else 0,
        weight.stride(0), scale.stride(0), y.stride(0), eps, SCALE_N=scale_n,
        GROUP_K=group_k, PER_ROW=per_row, PROLOGUE=prologue,
        HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
        ACC2D=acc2d and m == 1, **pdl.row_lines(k, 1), **pdl.launch_options(x.device), **cfg)
    return y


def fp8_gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, scale_n: int,
             group_k: int, bias: torch.Tensor | None = None, config: dict | None = None
             ) -> torch.Tensor:
    """x [M, K] (a few rows) @ dequant(weight [N, K] fp8, scale)^T (+ bias) -> [M, N]."""
    return _launch_gemv(PROLOGUE_NONE, x, x.shape[1], weight, scale, scale_n, group_k, bias,
                        config)


def fp8_add_rms_norm_gemv(hidden: torch.Tensor, residual: torch.Tensor | None,
                          norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                          scale: torch.Tensor, scale_n: int, group_k: int,
                          bias: torch.Tensor | None = None, config: dict | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(hidden + residual) @ dequant(W)^T (+ bias), hidden + residual) in one launch,
    rounding as kernels.gemv.add_rms_norm_gemm does; residual None: RMSNorm(hidden)."""
    residual_out = None
    if residual is not None:
        assert residual.shape == hidden.shape and residual.stride(1) == 1
        residual_out = torch.empty_like(hidden)
    y = _launch_gemv(PROLOGUE_ADD_NORM, hidden, hidden.shape[1], weight, scale, scale_n,
                     group_k, bias, config, residual, norm_weight, eps, residual_out)
    return y, (residual_out if residual_out is not None else hidden)


def fp8_silu_mul_gemv(gate_up: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                      scale_n: int, group_k: int, bias: torch.Tensor | None = None,
                      config: dict | None = None) -> torch.Tensor:
    """(silu(gate) * up) @ dequant(W)^T (+ bias) for gate_up [M, 2K] = cat(gate, up)."""
    assert gate_up.shape[1] % 2 == 0
    return _launch_gemv(PROLOGUE_SILU_MUL, gate_up, gate_up.shape[1] // 2, weight, scale,
                        scale_n, group_k, bias, config)


def gemm_config(m: int, n: int, k: int, group_k: int, per_row: bool, num_sms: int) -> dict:
    """Tiles of the GEMM; BLOCK_K divides group_k where scales change along K. A few hundred
    rows or fewer do not fill the device with 128-wide tiles: from GEMM_SPLIT_ROWS down, 64
    columns a tile and K split until about GEMM_PROGRAMS_PER_SM programs per SM run."""
    block_k = 128 if per_row else min(128, group_k)
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    block_n = 64 if m <= GEMM_SPLIT_ROWS else 128
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    k_tiles = triton.cdiv(k, block_k)
    split = 1
    if m <= GEMM_SPLIT_ROWS:
        split = max(1, min(k_tiles // 4, triton.cdiv(GEMM_PROGRAMS_PER_SM * num_sms, tiles)))
    per_split = triton.cdiv(k_tiles, split) * block_k
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
                SPLIT_K=triton.cdiv(k, per_split), K_PER_SPLIT=per_split,
                num_warps=4 if block_m <= 64 else 8, num_stages=3)


def a8_config(m: int, n: int, k: int, group_k: int, per_row: bool, num_sms: int) -> dict:
    """Tiles of the W8A8 GEMM (fp8_scaled_gemm): 128-wide K steps (a block scale's width), K
    split until about one program per SM streams W where the output tiles alone are fewer."""
    block_k = 128 if per_row else min(128, group_k)
    block_m = 64 if m <= 64 else 128
    block_n = 128
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    k_tiles = triton.cdiv(k, block_k)
    split = max(1, min(k_tiles // 4, triton.cdiv(num_sms, tiles)))
    per_split = triton.cdiv(k_tiles, split) * block_k
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
                SPLIT_K=triton.cdiv(k, per_split), K_PER_SPLIT=per_split,
                num_warps=4 if block_m <= 64 else 8, num_stages=4)


def _launch_gemm(x: torch.Tensor, x_scale: torch.Tensor | None, weight: torch.Tensor,
                 scale: torch.Tensor, scale_n: int, group_k: int, bias: torch.Tensor | None,
                 out_dtype: torch.dtype, config: dict | None) -> torch.Tensor:
    (m, k), n = x.shape, weight.shape[0]
    _check(x, k, weight, scale, scale_n, group_k)
    per_row, a8 = scale.shape[1] == 1, x_scale is not None
    pick = a8_config if a8 else gemm_config
    cfg = dict(config or pick(m, n, k, group_k, per_row, split_k.num_sms(x.device)))
    cfg.setdefault("SPLIT_K", 1)
    cfg.setdefault("K_PER_SPLIT", triton.cdiv(k, cfg["BLOCK_K"]) * cfg["BLOCK_K"])
    cfg.setdefault("OPAQUE", GEMM_OPAQUE and not a8 and not cfg.get("SWAP"))
    assert per_row or group_k % cfg["BLOCK_K"] == 0, (group_k, cfg)
    assert cfg["K_PER_SPLIT"] % cfg["BLOCK_K"] == 0, cfg
    assert cfg["SPLIT_K"] * cfg["K_PER_SPLIT"] >= k, cfg
    assert not cfg.get("FAST_ACC") or (a8 and per_row), "FAST_ACC: W8A8, per-row scales"
    bits = not a8 and x.dtype == torch.bfloat16 and e4m3.available(x.device)
    y = torch.empty(m, n, dtype=out_dtype, device=x.device)
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    partials = (torch.empty(cfg["SPLIT_K"], m, n, dtype=torch.float32, device=x.device)
                if cfg["SPLIT_K"] > 1 else y)
    _fp8_gemm_kernel[(tiles, cfg["SPLIT_K"])](
        x, x_scale if a8 else scale, weight.view(torch.uint8) if bits else weight, scale,
        bias if bias is not None else scale, y, partials, split_k.locks(x.device, tiles), m, n,
        k, cfg.pop("K_PER_SPLIT"), x.stride(0), weight.stride(0), scale.stride(0), y.stride(0),
        SCALE_N=scale_n, GROUP_K=group_k, PER_ROW=per_row, HAS_BIAS=bias is not None,
        IEEE=x.dtype == torch.float32, BITS=bits, A8=a8, **cfg)
    return y


def fp8_gemm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, scale_n: int,
             group_k: int, bias: torch.Tensor | None = None, config: dict | None = None
             ) -> torch.Tensor:
    """x [M, K] @ dequant(weight [N, K] fp8, scale)^T (+ bias) -> [M, N] in x's dtype."""
    return _launch_gemm(x, None, weight, scale, scale_n, group_k, bias, x.dtype, config)


def fp8_scaled_gemm(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                    scale: torch.Tensor, scale_n: int, group_k: int,
                    bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
                    config: dict | None = None) -> torch.Tensor:
    """W8A8: (xq [M, K] e4m3 * x_scale [M, 1]) @ dequant(weight, scale)^T (+ bias) -> [M, N]
    in out_dtype, on FP8 tensor cores; xq and x_scale as quantize_rows makes them."""
    assert xq.dtype == FP8_DTYPE and x_scale.dtype == torch.float32, (xq.dtype, x_scale.dtype)
    assert x_scale.numel() == xq.shape[0] and x_scale.is_contiguous(), x_scale.shape
    return _launch_gemm(xq, x_scale, weight, scale, scale_n, group_k, bias, out_dtype, config)


# -- references (plain PyTorch) ---------------------------------------------------------------
def dequantize_ref(weight: torch.Tensor, scale: torch.Tensor, scale_n: int, group_k: int
                   ) -> torch.Tensor:
    """The fp32 weight [N, K]: weight[n, k] * scale[n // scale_n, k // group_k]."""
    n, k = weight.shape
    expanded = scale.repeat_interleave(scale_n, 0)[:n].repeat_interleave(group_k, 1)[:, :k]
    return weight.float() * expanded.float()


def fp8_add_rms_norm_gemv_ref(hidden, residual, norm_weight, eps, weight, scale, scale_n,
                              group_k, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    from cormorant.kernels.rmsnorm import fused_add_rms_norm_ref, rms_norm_ref
    if residual is None:
        normed, total = rms_norm_ref(hidden, norm_weight, eps), hidden
    else:
        normed, total = fused_add_rms_norm_ref(hidden, residual, norm_weight, eps)
    return fp8_matmul_ref(normed, weight, scale, scale_n, group_k, bias), total


def fp8_silu_mul_gemv_ref(gate_up, weight, scale, scale_n, group_k, bias=None) -> torch.Tensor:
    from cormorant.kernels.activation import silu_and_mul_ref
    return fp8_matmul_ref(silu_and_mul_ref(gate_up), weight, scale, scale_n, group_k, bias)


def fp8_scaled_gemm_ref(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                        scale: torch.Tensor, scale_n: int, group_k: int,
                        bias: torch.Tensor | None = None,
                        out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The dequantized activations times the dequantized weight, fp32 sums, one rounding."""
    x = xq.float() * x_scale.float().reshape(-1, 1)
    return fp8_matmul_ref(x, weight, scale, scale_n, group_k, bias).to(out_dtype)


def fp8_matmul_ref(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, scale_n: int,
                   group_k: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 products and sums of the dequantized weight, one rounding to x's dtype."""
    y = x.float() @ dequantize_ref(weight, scale, scale_n, group_k).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
