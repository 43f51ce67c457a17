"""Programmatic dependent launch (PDL, sm_90+): a decode kernel starts while the one before drains.

In a decode step of batch 1 the kernels run back to back. Launched with PDL, a kernel's
programs may be scheduled once every program of the kernel before it has called
`launch_dependents` (the GEMVs: after their main loop; the small kernels: at their start);
they then `wait` (griddepcontrol.wait: the previous grid has completed and its writes are
visible) before touching anything that kernel writes, so the launch and scheduling of one
kernel overlap the tail of the one before.

A kernel may be launched with PDL only if it calls `wait` before its first load or store of
data another kernel touches; kernels that call neither still run correctly after or before a
PDL kernel (the launch then waits as usual). `enabled(device)` says whether to use it: CUDA
sm_90+, not the interpreter, Triton with the `launch_pdl` option, and CORMORANT_PDL not 0.
Measured on an H100 (2026-12-07, B2, benchmarks/RESULTS.md): Llama-3.1-8B FP8 3.59 -> 3.51
ms/token, int4 3.05 -> 2.89, bf16 unchanged (5.66 / 5.65); greedy tokens identical with it
on and off (benchmarks/pdl_check.py, CUDA graphs, bf16 / FP8 / int4). On by default.

`prefetch_l2` (CORMORANT_PDL_PREFETCH=1, off): the GEMVs ask the L2 for their first weight
lines before the wait. It measured slower (FP8 3.97 ms/token, int4 3.20) and stays for A/B
runs only.
Imports only torch and triton.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

SWITCH = os.environ.get("CORMORANT_PDL", "1") == "1"
# CORMORANT_PDL_PREFETCH=1: the GEMVs' L2 prefetch before the wait (measured slower)
PREFETCH: tl.constexpr = tl.constexpr(os.environ.get("CORMORANT_PDL_PREFETCH", "0") == "1")


@triton.jit
def wait(PDL: tl.constexpr):
    """Block until the previous grid has completed and its writes are visible (PDL only)."""
    if PDL:
        tl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def launch_dependents(PDL: tl.constexpr):
    """Let the next grid be scheduled once every program of this one has called this."""
    if PDL:
        tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_l2(ptrs, PDL: tl.constexpr):
    """Ask the L2 for the 128-byte line of each pointer (no registers written; PDL only)."""
    if PDL and PREFETCH:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs],
                                  dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_rows(w_ptr, offs_n, N, K, stride_wn, PF_LINES: tl.constexpr, LINE: tl.constexpr,
                  PDL: tl.constexpr):
    """prefetch_l2 of the first PF_LINES lines (LINE elements each) of weight rows offs_n of
    a row-major [N, K] weight: the one-row GEMVs' (row_lines gives the two sizes)."""
    if PDL and PREFETCH:
        lines = tl.minimum(tl.arange(0, PF_LINES) * LINE, K - 1)
        prefetch_l2(w_ptr + tl.minimum(offs_n, N - 1)[:, None].to(tl.int64) * stride_wn
                    + lines[None, :], PDL)


def row_lines(k: int, element_size: int) -> dict:
    """prefetch_rows' sizes for rows of k elements: at most 128 lines of 128 bytes."""
    return dict(PF_LINES=min(128, triton.next_power_of_2(triton.cdiv(k * element_size, 128))),
                LINE=128 // element_size)


@functools.cache
def _triton_has_option() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


def enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL (see the module docstring)."""
    if not SWITCH or device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _capable(index: int) -> bool:
    """sm_90+ and a Triton with the launch option (asked once per card: launches are hot)."""
    return torch.cuda.get_device_capability(index) >= (9, 0) and _triton_has_option()


def launch_options(device: torch.device) -> dict:
    """The keyword arguments a PDL-aware kernel launch adds: its PDL constexpr and, where
    enabled, Triton's launch_pdl option."""
    on = enabled(device)
    return dict(PDL=True, launch_pdl=True) if on else dict(PDL=False)
