"""Split K across programs, reduced inside the same launch (the int and FP8 weight kernels).

How many splits fill the device (split_k), the per-tile counters (locks) and the reduction
(finish) that the weight-only int and FP8 kernels share. Each split writes fp32 partials;
the last split of an output tile to finish sums them in split order (deterministic), so a
projection stays one launch.
Imports torch and triton.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def finish(acc, y_ptr, y_offs, p_ptr, p_offs, p_stride, lock_ptr, lock_id, pid_k, mask,
            SPLIT_K, sq, sq_ptr, sq_stride, K, eps, NORM: tl.constexpr):
    """Store a program's fp32 result: straight to y without split-K; else as a partial, and the
    last split of this output tile to finish (a counter per tile, acquire/release atomics after
    a CTA barrier, so every thread's partial is published) sums all partials in split order
    (deterministic), writes y and resets the counter for the next launch. NORM (the GEMV's
    add + RMSNorm prologue): sq is this split's sum of squared inputs, kept beside its partial
    (at sq_ptr + pid_k * sq_stride + lock_id), and the result is scaled by 1 / rms of the sum."""
    if SPLIT_K == 1:
        if NORM:
            acc = acc * tl.rsqrt(sq / K + eps)
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(p_ptr + pid_k * p_stride + p_offs, acc, mask=mask)
        if NORM:
            tl.store(sq_ptr + pid_k * sq_stride + lock_id, sq)
        tl.debug_barrier()
        done = tl.atomic_add(lock_ptr + lock_id, 1, sem="acq_rel")
        if done == SPLIT_K - 1:
            total = tl.zeros_like(acc)
            total_sq = 0.0
            for i in range(SPLIT_K):
                total += tl.load(p_ptr + i * p_stride + p_offs, mask=mask, other=0.0,
                                 cache_modifier=".cg")
                if NORM:
                    total_sq += tl.load(sq_ptr + i * sq_stride + lock_id, cache_modifier=".cg")
            if NORM:
                total = total * tl.rsqrt(total_sq / K + eps)
            tl.store(y_ptr + y_offs, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(lock_ptr + lock_id, 0)


def inline_ptx(device: torch.device) -> bool:
    """Whether kernels may use inline PTX: CUDA, not under the interpreter."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1"


def has_bf16x2(device: torch.device) -> bool:
    """Whether inline PTX may use packed bf16 arithmetic (fma.rn.bf16x2: sm_80 and later).
    Devices other than CUDA answer True: inline_ptx already refuses them, except where a test
    compiles for a chosen architecture (tests/kernels/sm90_compile.py)."""
    if device.type != "cuda":
        return True
    return _capability(device.index if device.index is not None
                       else torch.cuda.current_device()) >= (8, 0)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    """The card's compute capability (asked once per card: launches are hot)."""
    return torch.cuda.get_device_capability(index)


@functools.cache
def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def split_k(n: int, k: int, block_n: int, block_k: int, programs_per_sm: int,
             num_sms: int, at_most: bool = False) -> dict:
    """SPLIT_K and K_PER_SPLIT so that about programs_per_sm programs per SM stream W; with
    at_most, no more than that (the split rounded down: one wave where that many fit)."""
    programs = triton.cdiv(n, block_n)
    k_tiles = triton.cdiv(k, block_k)
    target = programs_per_sm * num_sms
    split = max(1, min(k_tiles, target // programs if at_most else triton.cdiv(target, programs)))
    per_split = triton.cdiv(k_tiles, split) * block_k
    return dict(SPLIT_K=triton.cdiv(k, per_split), K_PER_SPLIT=per_split)


LOCKS: dict[torch.device, torch.Tensor] = {}  # per device: a zeroed counter per column tile


def locks(device: torch.device, tiles: int) -> torch.Tensor:
    """The GEMV's split-K counters (each launch leaves them at zero); allocated once per device,
    so CUDA graphs capture a fixed address."""
    counters = LOCKS.get(device)
    if counters is None or counters.numel() < tiles:
        counters = LOCKS[device] = torch.zeros(max(tiles, 4096), dtype=torch.int32,
                                             device=device)
    return counters
