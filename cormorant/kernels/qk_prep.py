"""Attention input preparation in one launch: q/k norm, rotary and the KV-cache write.

Optional per-head RMSNorm of q and k (Qwen3), rotary embedding of q and k, and the write of k
and v into the paged KV cache.
Three or four launches per layer become one (batch-1 decode is bound by launch count: ~300
small kernels per Qwen3-0.6B step). The rounding follows the unfused kernels exactly: the
norm's output is rounded to the activation dtype before the weight multiply and again after
it, cos/sin are rounded to the activation dtype, and k reaches the cache through the
activation dtype. q is rotated in place; k is not written back (attention reads the cache).
An fp8 cache gets k (through the activation dtype) and v quantized as kernels.kv_cache does.
`qk_prep_ref` is the PyTorch reference. Imports torch, triton, kernels.kv_cache and kernels.pdl.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cormorant.kernels import pdl
from cormorant.kernels.kv_cache import to_cache


@triton.jit
def _prep_heads(x_ptr, tok, stride_t, stride_h, w_ptr, eps, cos, sin,
                NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr,
                BLOCK_HALF: tl.constexpr, HAS_NORM: tl.constexpr):
    """(rotated first half, rotated second half) in fp32, [BLOCK_H, BLOCK_HALF] each."""
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    mask = (heads[:, None] < NUM_HEADS) & (dims[None, :] < HALF)
    first = x_ptr + tok * stride_t + heads[:, None] * stride_h + dims[None, :]
    act = x_ptr.dtype.element_ty
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF) + eps)
        w1 = tl.load(w_ptr + dims, mask=dims < HALF, other=0.0).to(tl.float32)[None, :]
        w2 = tl.load(w_ptr + HALF + dims, mask=dims < HALF, other=0.0).to(tl.float32)[None, :]
        x1 = ((x1 * rstd[:, None]).to(act).to(tl.float32) * w1).to(act).to(tl.float32)
        x2 = ((x2 * rstd[:, None]).to(act).to(tl.float32) * w2).to(act).to(tl.float32)
    return x1 * cos - x2 * sin, x2 * cos + x1 * sin


@triton.jit
def _qk_prep_kernel(q_ptr, k_ptr, v_ptr, positions_ptr, cos_sin_ptr, qw_ptr, kw_ptr,
                    cache_ptr, slot_mapping_ptr, k_scale_ptr, v_scale_ptr, eps,
                    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                    stride_cache, stride_c_kv, stride_cb, stride_cs, stride_ch,
                    NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr,
                    BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, HALF: tl.constexpr,
                    BLOCK_HALF: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    HAS_NORM: tl.constexpr, KV_FP8: tl.constexpr, PDL: tl.constexpr):
    # Program (token, 0) does q, (token, 1) k and v: at batch 1 the two halves run side by
    # side instead of one after the other in a single program.
    pdl.wait(PDL)  # before any load: the previous kernel's writes are visible
    pdl.launch_dependents(PDL)
    tok = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    pos = tl.load(positions_ptr + tok).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)
    act = q_ptr.dtype.element_ty
    row = cos_sin_ptr + pos * stride_cache + dims
    cos = tl.load(row, mask=dims < HALF, other=0.0).to(act).to(tl.float32)[None, :]
    sin = tl.load(row + HALF, mask=dims < HALF, other=0.0).to(act).to(tl.float32)[None, :]

    if part == 0:
        q1, q2 = _prep_heads(q_ptr, tok, stride_qt, stride_qh, qw_ptr, eps, cos, sin,
                             NUM_Q_HEADS, BLOCK_QH, HALF, BLOCK_HALF, HAS_NORM)
        qh = tl.arange(0, BLOCK_QH)
        qmask = (qh[:, None] < NUM_Q_HEADS) & (dims[None, :] < HALF)
        qdst = q_ptr + tok * stride_qt + qh[:, None] * stride_qh + dims[None, :]
        tl.store(qdst, q1.to(act), mask=qmask)
        tl.store(qdst + HALF, q2.to(act), mask=qmask)

    slot = tl.load(slot_mapping_ptr + tok).to(tl.int64)
    if (part == 1) & (slot >= 0):  # padding rows of a CUDA graph write nothing
        k1, k2 = _prep_heads(k_ptr, tok, stride_kt, stride_kh, kw_ptr, eps, cos, sin,
                             NUM_K_HEADS, BLOCK_KH, HALF, BLOCK_HALF, HAS_NORM)
        kh = tl.arange(0, BLOCK_KH)
        kmask = (kh[:, None] < NUM_K_HEADS) & (dims[None, :] < HALF)
        dst = (cache_ptr + (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
               + kh[:, None] * stride_ch + dims[None, :])
        cache_ty = cache_ptr.dtype.element_ty
        ks = tl.load(k_scale_ptr) if KV_FP8 else 1.0
        vs = tl.load(v_scale_ptr) if KV_FP8 else 1.0
        tl.store(dst, to_cache(k1.to(act), ks, cache_ty, KV_FP8), mask=kmask)
        tl.store(dst + HALF, to_cache(k2.to(act), ks, cache_ty, KV_FP8), mask=kmask)
        vsrc = v_ptr + tok * stride_vt + kh[:, None] * stride_vh + dims[None, :]
        tl.store(dst + stride_c_kv, to_cache(tl.load(vsrc, mask=kmask), vs, cache_ty, KV_FP8),
                 mask=kmask)
        tl.store(dst + stride_c_kv + HALF,
                 to_cache(tl.load(vsrc + HALF, mask=kmask), vs, cache_ty, KV_FP8), mask=kmask)


def qk_prep(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
            cos_sin_cache: torch.Tensor, q_norm_weight: torch.Tensor | None,
            k_norm_weight: torch.Tensor | None, eps: float, kv_cache: torch.Tensor,
            slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
            v_scale: torch.Tensor | None = None) -> None:
    """q [T, Hq, D] normalised (if weights are given) and rotated in place; k normalised,
    rotated and written with v [T, Hkv, D] into kv_cache [2, blocks, block_size, Hkv, D] at
    slot_mapping [T] (-1 skipped). cos_sin_cache: [max_position, D], cos half then sin half.
    An fp8 cache needs k_scale and v_scale (fp32 one-element device tensors)."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    assert k.shape == v.shape and k.shape[0] == num_tokens and k.shape[2] == head_dim
    assert cos_sin_cache.shape[1] == head_dim and head_dim % 2 == 0
    assert q.stride(2) == 1 and k.stride(2) == 1 and v.stride(2) == 1
    assert kv_cache.shape[0] == 2 and tuple(kv_cache.shape[3:]) == (num_k_heads, head_dim)
    assert kv_cache.stride(4) == 1 and cos_sin_cache.stride(1) == 1
    has_norm = q_norm_weight is not None
    assert has_norm == (k_norm_weight is not None)
    if num_tokens == 0:
        return
    half = head_dim // 2
    block_half = triton.next_power_of_2(half)
    block_qh = triton.next_power_of_2(num_q_heads)
    block_kh = triton.next_power_of_2(num_k_heads)
    qw = q_norm_weight if has_norm else q  # unused pointer when HAS_NORM is False
    kw = k_norm_weight if has_norm else k
    fp8 = kv_cache.dtype == torch.float8_e4m3fn
    assert not fp8 or (k_scale is not None and v_scale is not None), "fp8 cache needs scales"
    _qk_prep_kernel[(num_tokens, 2)](
        q, k, v, positions, cos_sin_cache, qw, kw, kv_cache, slot_mapping,
        k_scale if fp8 else q, v_scale if fp8 else q, eps,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos_sin_cache.stride(0), kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
        kv_cache.stride(3), NUM_Q_HEADS=num_q_heads, NUM_K_HEADS=num_k_heads,
        BLOCK_QH=block_qh, BLOCK_KH=block_kh, HALF=half, BLOCK_HALF=block_half,
        BLOCK_SIZE=kv_cache.shape[2], HAS_NORM=has_norm, KV_FP8=fp8,
        num_warps=max(1, min(8, block_qh * block_half // 256)), **pdl.launch_options(q.device))


def qk_prep_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                cos_sin_cache: torch.Tensor, q_norm_weight: torch.Tensor | None,
                k_norm_weight: torch.Tensor | None, eps: float, kv_cache: torch.Tensor,
                slot_mapping: torch.Tensor, k_scale: torch.Tensor | None = None,
                v_scale: torch.Tensor | None = None) -> None:
    """The unfused PyTorch path, same in-place contract (q rotated in place, k/v cached)."""
    from cormorant.kernels.kv_cache import store_kv_cache_ref
    from cormorant.kernels.rotary import rotary_embedding_ref

    def norm(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        if w is None:
            return x
        x32 = x.float()
        normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
        return (normed.float() * w.float()).to(x.dtype)

    q_rot, k_rot = rotary_embedding_ref(positions, norm(q, q_norm_weight),
                                        norm(k, k_norm_weight), cos_sin_cache)
    q.copy_(q_rot)
    store_kv_cache_ref(k_rot, v, kv_cache, slot_mapping, k_scale, v_scale)
