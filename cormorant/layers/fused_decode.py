"""The decoder's small ops folded into the projection after them, for decode-sized batches.

    qkv, residual = norm_then_linear(input_layernorm, qkv_proj, hidden, residual)
    out = act_then_linear(act, down_proj, gate_up)

On a decode step of DECODE_MAX_ROWS sequences (layers.linear.decode_gemv_kernels: batch 1,
bf16/fp16, CUDA, a dense weight) each call is one launch of
kernels.gemv: the residual add + RMSNorm, or the SiLU-and-multiply, is computed by the GEMV
as it reads its input (with the plain GEMVs, 4 launches per layer instead of 8-9, and no
round trip of the normalised row through memory). Everywhere else the same two calls run the unfused layers, so the models
have one code path and the CPU, fp32 parity runs and large batches are unchanged.
Imports: torch, cormorant.layers.
"""
from __future__ import annotations

import torch

from cormorant.layers.activation import SiluAndMul
from cormorant.layers.linear import (ColumnParallelLinear, DenseLinearMethod,
                                     RowParallelLinear, decode_gemv_kernels)
from cormorant.layers.norm import RMSNorm
from cormorant.layers.parallel import all_reduce


def norm_then_linear(norm: RMSNorm, linear: ColumnParallelLinear, hidden: torch.Tensor,
                     residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(norm(hidden + residual)), hidden + residual); residual None: no add.
    The inputs may be overwritten (the unfused norm kernel works in place)."""
    kernels = _fusable(linear, hidden)
    if kernels is not None:
        return kernels.add_rms_norm_gemm(hidden, residual, norm.weight, norm.eps,
                                         linear.weight, linear.bias)
    if residual is None:
        residual, normed = hidden, norm(hidden)
    else:
        normed, residual = norm(hidden, residual)
    return linear(normed), residual


def act_then_linear(act: SiluAndMul, linear: RowParallelLinear, gate_up: torch.Tensor
                    ) -> torch.Tensor:
    """linear(act(gate_up)) for the packed [T, 2 * intermediate] gate/up projection."""
    kernels = _fusable(linear, gate_up)
    if kernels is not None:
        return all_reduce(kernels.silu_mul_gemm(gate_up, linear.weight, linear.rank_bias))
    return linear(act(gate_up))


def _fusable(linear: ColumnParallelLinear | RowParallelLinear, x: torch.Tensor):
    """kernels.gemv when this projection may take the fused path, else None."""
    if type(linear.method) is not DenseLinearMethod:  # other formats bring their own matmul
        return None
    return decode_gemv_kernels(x, linear.weight)
