"""KV-cache write: scatter this step's keys and values into their paged-cache slots.

Imports only torch and triton. The cache layout is cormorant.layers.attention's
[2, num_blocks, block_size, num_kv_heads, head_dim]; a token's slot is
block_id * block_size + offset, and slot -1 marks a padding token that must not be written.
k and v may be strided views (e.g. slices of a fused qkv projection); only their last
dimension must be contiguous. An fp8 cache (float8_e4m3fn) gets x / scale clamped to +-448,
then cast (round to nearest even), with the layer's k_scale/v_scale read from fp32 device
tensors (CUDA-graph safe); `to_cache` is that conversion, shared with kernels.qk_prep.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_MAX = 448.0  # float8_e4m3fn's largest finite value
_FP8_MAX = tl.constexpr(FP8_MAX)  # the same, readable inside kernels


@triton.jit
def round_to_e4m3(x):
    """fp32 x (|x| <= 448) rounded to nearest even on the e4m3 grid, still in fp32, so the
    cast after it is exact. The same rounding as the hardware's (and torch's) conversion,
    made explicit because Triton's interpreter rounds fp8 casts wrongly (no carry into the
    exponent, subnormals truncated). A few integer ops in a memory-bound kernel."""
    xbits = x.to(tl.int32, bitcast=True)
    bits = xbits & 0x7FFFFFFF  # |x|
    # Normal range: keep 3 of fp32's 23 mantissa bits, ties to even; a carry runs into the
    # exponent by itself.
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # -1048576 = 0xFFF00000
    # Subnormal range (|x| < 2**-6, multiples of 2**-9): one fp32 add rounds |x| to that grid
    # (ties to even), since 1.5 * 2**14's fp32 step is 2**-9; the subtraction is exact.
    ax = tl.abs(x)
    small = ((ax + 24576.0) - 24576.0).to(tl.int32, bitcast=True)
    bits = tl.where(ax < 0.015625, small, bits)
    return (bits | (xbits & -2147483648)).to(tl.float32, bitcast=True)  # the sign back


@triton.jit
def to_cache(x, scale, cache_ty: tl.constexpr, KV_FP8: tl.constexpr):
    """x as the cache stores it: cast, or for fp8 x / scale in fp32, clamped to +-448,
    rounded to nearest even, then cast."""
    if KV_FP8:
        # div_rn: correctly rounded, as torch divides (plain / is div.full.f32, 2 ulp).
        x = round_to_e4m3(tl.clamp(tl.math.div_rn(x.to(tl.float32), scale), -_FP8_MAX,
                                   _FP8_MAX))
    return x.to(cache_ty)


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, cache_ptr, slot_mapping_ptr, k_scale_ptr, v_scale_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_c_kv, stride_cb, stride_cs, stride_ch,
                     NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                     KV_FP8: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)
    # int64 offsets: a large cache easily exceeds 2**31 elements.
    dst = (cache_ptr + (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
           + heads[:, None] * stride_ch + dims[None, :])
    k = tl.load(k_ptr + tok * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
    v = tl.load(v_ptr + tok * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    cache_ty = cache_ptr.dtype.element_ty
    k_scale = tl.load(k_scale_ptr) if KV_FP8 else 1.0
    v_scale = tl.load(v_scale_ptr) if KV_FP8 else 1.0
    tl.store(dst, to_cache(k, k_scale, cache_ty, KV_FP8), mask=mask)
    tl.store(dst + stride_c_kv, to_cache(v, v_scale, cache_ty, KV_FP8), mask=mask)


def store_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                   v_scale: torch.Tensor | None = None) -> None:
    """Write k, v [num_tokens, num_kv_heads, head_dim] into kv_cache at slot_mapping
    [num_tokens] (int32 or int64; -1 skipped). One program per token, no host sync.
    An fp8 cache needs k_scale and v_scale: fp32 one-element tensors on the device."""
    num_tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape and slot_mapping.shape[0] >= num_tokens
    assert kv_cache.shape[0] == 2 and tuple(kv_cache.shape[3:]) == (num_kv_heads, head_dim)
    assert k.stride(2) == 1 and v.stride(2) == 1 and kv_cache.stride(4) == 1
    if num_tokens == 0:
        return
    fp8 = kv_cache.dtype == torch.float8_e4m3fn
    assert not fp8 or (k_scale is not None and v_scale is not None), "fp8 cache needs scales"
    block_h = triton.next_power_of_2(num_kv_heads)
    block_d = triton.next_power_of_2(head_dim)
    _store_kv_kernel[(num_tokens,)](
        k, v, kv_cache, slot_mapping, k_scale if fp8 else k, v_scale if fp8 else v,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_D=block_d,
        BLOCK_SIZE=kv_cache.shape[2], KV_FP8=fp8, num_warps=_warps(block_h * block_d))


def _warps(num_elements: int) -> int:
    # About 8 elements per thread (16-byte vectors for bf16), between 1 and 8 warps.
    return max(1, min(8, num_elements // 256))


def store_kv_cache_ref(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                       slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                       v_scale: torch.Tensor | None = None) -> None:
    """Plain PyTorch reference of store_kv_cache (synchronises on the -1 check)."""
    num_kv_heads, head_dim = kv_cache.shape[-2:]
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)  # [2, num_slots, Hkv, D]
    slots = slot_mapping[:k.shape[0]].long()
    valid = slots >= 0
    k, v = k[valid], v[valid]
    if kv_cache.dtype == torch.float8_e4m3fn:  # bytes: no float8 index_copy_ on the CPU
        k = (k.float() / k_scale).clamp(-FP8_MAX, FP8_MAX).to(kv_cache.dtype).view(torch.uint8)
        v = (v.float() / v_scale).clamp(-FP8_MAX, FP8_MAX).to(kv_cache.dtype).view(torch.uint8)
        flat = flat.view(torch.uint8)
    flat[0].index_copy_(0, slots[valid], k.to(flat.dtype))
    flat[1].index_copy_(0, slots[valid], v.to(flat.dtype))
