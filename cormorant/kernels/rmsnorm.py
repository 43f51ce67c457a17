"""RMSNorm and residual-add + RMSNorm, one program per row, fp32 statistics.

Imports torch, triton and kernels.pdl. Numerics follow HF Llama/Qwen: the sum x + residual is
rounded to the activation dtype (it is the next residual), the norm is computed in fp32, the
normalised row is rounded to the activation dtype and then multiplied by the weight.

Rows may be a strided 3-D view [T, H, D] (Qwen3 per-head q/k norm on slices of a fused qkv
projection): row r is (r // H, r % H). Only the last dimension must be contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cormorant.kernels import pdl


@triton.jit
def _row_offset(row, inner, stride_outer, stride_inner):
    return (row // inner) * stride_outer + (row % inner) * stride_inner


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, inner, sx_outer, sx_inner, so_outer, so_inner,
                     eps, N: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)  # before any load: the previous kernel's writes are visible
    pdl.launch_dependents(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + _row_offset(row, inner, sx_outer, sx_inner) + cols, mask=mask,
                other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    normed = (x * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + _row_offset(row, inner, so_outer, so_inner) + cols,
             (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, stride_x, stride_r, eps,
                         N: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)  # before any load: the previous kernel's writes are visible
    pdl.launch_dependents(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x_row = x_ptr + row * stride_x + cols
    r_row = res_ptr + row * stride_r + cols
    total = tl.load(x_row, mask=mask, other=0.0).to(tl.float32) + \
        tl.load(r_row, mask=mask, other=0.0).to(tl.float32)
    total = total.to(res_ptr.dtype.element_ty)
    tl.store(r_row, total, mask=mask)
    s = total.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(s * s, axis=0) / N + eps)
    normed = (s * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_row, (normed * w).to(x_ptr.dtype.element_ty), mask=mask)


def _rows_view(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(num_rows, inner, stride_outer, stride_inner) of a 2-D or 3-D tensor's rows."""
    assert t.stride(-1) == 1, "the normalised dimension must be contiguous"
    if t.dim() == 2:
        return t.shape[0], 1, t.stride(0), 0
    assert t.dim() == 3
    return t.shape[0] * t.shape[1], t.shape[1], t.stride(0), t.stride(1)


def _warps(block: int) -> int:
    return max(1, min(16, block // 256))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim of x [T, N] or [T, H, N]; out may be x (in place)."""
    if out is None:
        out = torch.empty_like(x)
    assert out.shape == x.shape and weight.shape == (x.shape[-1],)
    num_rows, inner, sx_outer, sx_inner = _rows_view(x)
    _, _, so_outer, so_inner = _rows_view(out)
    if num_rows == 0:
        return out
    n = x.shape[-1]
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(num_rows,)](x, weight, out, inner, sx_outer, sx_inner, so_outer, so_inner,
                                  eps, N=n, BLOCK=block, num_warps=_warps(block),
                                  **pdl.launch_options(x.device))
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: residual <- x + residual; x <- RMSNorm(residual). Returns (x, residual).
    x, residual: [T, N] with contiguous rows."""
    assert x.shape == residual.shape and x.dim() == 2 and weight.shape == (x.shape[1],)
    assert x.stride(1) == 1 and residual.stride(1) == 1
    if x.shape[0] == 0:
        return x, residual
    n = x.shape[1]
    block = triton.next_power_of_2(n)
    _add_rms_norm_kernel[(x.shape[0],)](x, residual, weight, x.stride(0), residual.stride(0),
                                        eps, N=n, BLOCK=block, num_warps=_warps(block),
                                        **pdl.launch_options(x.device))
    return x, residual


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain PyTorch reference (HF LlamaRMSNorm)."""
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (normed.float() * weight.float()).to(x.dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-place reference: (RMSNorm(x + residual), x + residual)."""
    total = (x.float() + residual.float()).to(residual.dtype)
    return rms_norm_ref(total.to(x.dtype), weight, eps), total
