"""SiLU-and-multiply of a packed gate/up projection: out = silu(x[:, :I]) * x[:, I:].

Imports torch, triton and kernels.pdl. Math is fp32 with one rounding on store (HF rounds twice in
bf16: after silu and after the product; the difference is within one bf16 ulp).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cormorant.kernels import pdl


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, inter,
                         BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)  # before any load: the previous kernel's writes are visible
    pdl.launch_dependents(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, 2 * I] (gate then up) -> [T, I]."""
    num_tokens, width = x.shape
    assert width % 2 == 0 and x.stride(1) == 1
    inter = width // 2
    if out is None:
        out = torch.empty(num_tokens, inter, dtype=x.dtype, device=x.device)
    assert out.shape == (num_tokens, inter) and out.stride(1) == 1
    if num_tokens == 0:
        return out
    block = min(1024, triton.next_power_of_2(inter))
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(inter, block))](
        x, out, x.stride(0), out.stride(0), inter, BLOCK=block,
        num_warps=max(1, min(4, block // 256)), **pdl.launch_options(x.device))
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference (fp32 math, one rounding)."""
    gate, up = x.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)
