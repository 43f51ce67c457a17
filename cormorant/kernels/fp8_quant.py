"""FP8 (e4m3) quantization of activations in Triton: a scale per row and its codes, one launch.

The activations that meet FP8 weights on the FP8 tensor cores (torch._scaled_mm, and the
Triton W8A8 tiles of kernels.fp8_gemm) are quantized per token: scale = amax / 448 (at least
1e-12), or a checkpoint's static per-tensor input scale; codes = x / scale clamped to +-448.
  quantize_rows  x [M, K] -> (codes, scales [M, 1]); in PyTorch ops it is five launches, which
                 cost more than the matmul at a few hundred rows. A row of up to
                 QUANT_ONE_PASS_K inputs is read once (held in registers); longer, twice.
  add_rms_norm_quantize / silu_mul_quantize  the same, making the input on the fly: the
                 residual add + RMSNorm, or SiLU-and-multiply (one launch instead of two, the
                 same codes as the unfused kernels then quantize_rows).
layers.fp8_linear's quantize_activations is the reference (same divisions, same rounding).
Imports torch, triton and kernels.gemv (its prologue helper and codes), kernels.rmsnorm (its
warps).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cormorant.kernels import rmsnorm
from cormorant.kernels.gemv import PROLOGUE_ADD_NORM, PROLOGUE_NONE, PROLOGUE_SILU_MUL, _row_input

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX_TL: tl.constexpr = tl.constexpr(448.0)  # the largest finite e4m3fn value
# quantize_rows reads a row once where it has up to this many inputs (held in registers: 64
# floats a thread at 8 warps); longer rows are read twice. The two-pass form took 4.8 us a call
# at 128 rows of 4096 in B3 128/128 (H100, 2026-12-07), 0.7 ms of a 6.9 ms decode step.
QUANT_ONE_PASS_K = 16384


@triton.jit
def _prologue_row(x_row, r_row, nw_ptr, res_out_row, offs, K, eps, PROLOGUE: tl.constexpr,
                  HAS_RESIDUAL: tl.constexpr):
    """fp32 values of one whole row of the quantizer's input, as kernels.gemv's _row_input
    makes them (the sum hidden + residual written to res_out_row), the norm then computed
    over the row as kernels.rmsnorm computes and rounds it."""
    mask = offs < K
    v, s = _row_input(x_row, r_row, nw_ptr, res_out_row, offs, mask, 0.0, True, K, PROLOGUE,
                      HAS_RESIDUAL, False)
    if PROLOGUE == 1:  # PROLOGUE_ADD_NORM: v is s * weight so far
        dtype = x_row.dtype.element_ty
        rstd = tl.rsqrt(tl.sum(s * s, axis=0) / K + eps)
        nw = tl.load(nw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = ((s * rstd).to(dtype).to(tl.float32) * nw).to(dtype).to(tl.float32)
    return v


@triton.jit
def _row_scale(amax, s_in_ptr, STATIC: tl.constexpr):
    """A row's scale: its amax / 448 (at least 1e-12), or the static input scale."""
    if STATIC:
        return tl.load(s_in_ptr)
    return tl.maximum(tl.math.div_rn(amax, FP8_MAX_TL), 1e-12)


@triton.jit
def _codes(v, scale, dtype: tl.constexpr):
    """v / scale clamped to +-448, as e4m3 codes."""
    return tl.minimum(tl.maximum(tl.math.div_rn(v, scale), -FP8_MAX_TL), FP8_MAX_TL).to(dtype)


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, s_in_ptr, s_out_ptr, r_ptr, nw_ptr, res_out_ptr, K,
                          stride_xm, stride_qm, stride_rm, eps, STATIC: tl.constexpr,
                          BLOCK_K: tl.constexpr, PROLOGUE: tl.constexpr = 0,
                          HAS_RESIDUAL: tl.constexpr = False):
    """One row: its scale (amax / 448, or the static input scale) and its e4m3 codes. Where
    BLOCK_K covers K the row is read once and kept in registers, and its input may be made on
    the fly (PROLOGUE, see _prologue_row; K is then the output width); else read twice, in
    BLOCK_K steps."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row.to(tl.int64) * stride_xm
    q_row = q_ptr + row.to(tl.int64) * stride_qm
    if BLOCK_K >= K:
        v = _prologue_row(x_row, r_ptr + row.to(tl.int64) * stride_rm, nw_ptr,
                          res_out_ptr + row.to(tl.int64) * stride_rm, offs, K, eps, PROLOGUE,
                          HAS_RESIDUAL)
        scale = _row_scale(tl.max(tl.abs(v), axis=0), s_in_ptr, STATIC)
        tl.store(s_out_ptr + row, scale)
        tl.store(q_row + offs, _codes(v, scale, q_ptr.dtype.element_ty), mask=offs < K)
        return
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    if not STATIC:
        for k0 in range(0, K, BLOCK_K):
            v = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(v))
    scale = _row_scale(tl.max(amax, axis=0), s_in_ptr, STATIC)
    tl.store(s_out_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        mask = k0 + offs < K
        v = tl.load(x_row + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(q_row + k0 + offs, _codes(v, scale, q_ptr.dtype.element_ty), mask=mask)


def _launch_quantize(x: torch.Tensor, k: int, input_scale: torch.Tensor | None,
                     prologue: int = PROLOGUE_NONE, residual: torch.Tensor | None = None,
                     norm_weight: torch.Tensor | None = None, eps: float = 0.0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes [M, k], scales [M, 1], hidden + residual or None) of _quantize_rows_kernel."""
    m = x.shape[0]
    assert x.stride(1) == 1
    q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    total = torch.empty_like(x) if residual is not None else None
    if residual is not None:  # one row stride for the three of them
        assert x.is_contiguous() and residual.is_contiguous(), (x.stride(), residual.stride())
    static = input_scale is not None
    block_k = min(QUANT_ONE_PASS_K, triton.next_power_of_2(k))  # one pass up to 16384 inputs
    assert prologue == PROLOGUE_NONE or block_k >= k, "a prologue needs the row in one pass"
    # the norm's warps as kernels.rmsnorm takes them: its sum of squares in the same order
    warps = (rmsnorm._warps(block_k) if prologue == PROLOGUE_ADD_NORM
             else 4 if block_k <= 4096 else 8)
    _quantize_rows_kernel[(m,)](
        x, q, input_scale.float() if static else scales, scales,
        residual if residual is not None else x,
        norm_weight if norm_weight is not None else x, total if total is not None else x, k,
        x.stride(0), q.stride(0), x.stride(0), eps, STATIC=static, BLOCK_K=block_k,
        PROLOGUE=prologue, HAS_RESIDUAL=residual is not None, num_warps=warps)
    return q, scales, total


def quantize_rows(x: torch.Tensor, input_scale: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 codes [M, K], fp32 scales [M, 1]) in one launch: per row amax / 448
    (clamped at 1e-12), or the static per-tensor input_scale; layers.fp8_linear's
    quantize_activations is the reference (same divisions, same rounding)."""
    q, scales, _ = _launch_quantize(x, x.shape[1], input_scale)
    return q, scales


def add_rms_norm_quantize(hidden: torch.Tensor, residual: torch.Tensor | None,
                          norm_weight: torch.Tensor, eps: float,
                          input_scale: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_rows(RMSNorm(hidden + residual)) and hidden + residual (hidden itself when
    residual is None) in one launch, for rows up to QUANT_ONE_PASS_K wide: the codes and
    scales the unfused kernels.rmsnorm then quantize_rows give. Inputs are not modified."""
    q, scales, total = _launch_quantize(hidden, hidden.shape[1], input_scale, PROLOGUE_ADD_NORM,
                                        residual, norm_weight, eps)
    return q, scales, hidden if total is None else total


def silu_mul_quantize(gate_up: torch.Tensor, input_scale: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_rows(silu(gate) * up) of gate_up [M, 2 * I] in one launch (I up to
    QUANT_ONE_PASS_K): the codes and scales of kernels.activation then quantize_rows."""
    q, scales, _ = _launch_quantize(gate_up, gate_up.shape[1] // 2, input_scale,
                                    PROLOGUE_SILU_MUL)
    return q, scales
