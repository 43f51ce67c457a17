"""Neox-style rotary embedding (HF Llama/Qwen "rotate_half") applied to q and k in place.

Imports only torch and triton. The cos/sin cache is [max_position, rotary_dim]: the first half
of each row holds cos(pos * inv_freq), the second half sin(pos * inv_freq) (vLLM's layout), so
one gather per token fetches both. With rotary_dim < head_dim only the leading rotary_dim
dimensions rotate (partial rotary); the rest pass through. cos/sin are rounded to the activation
dtype first (as transformers and layers.rotary do), then the math is fp32, rounded once on store.
q and k may be strided views (slices of a fused qkv projection); their last dim is contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(x_ptr, tok, stride_t, stride_h, cos, sin,
                  NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr,
                  BLOCK_HALF: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    mask = (heads[:, None] < NUM_HEADS) & (dims[None, :] < HALF)
    first = x_ptr + tok * stride_t + heads[:, None] * stride_h + dims[None, :]  # [BLOCK_H, HALF]
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    # rotate_half(x) = cat(-x2, x1): out = x * cos + rotate_half(x) * sin, per half.
    tl.store(first, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(first + HALF, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, positions_ptr, cos_sin_ptr,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_cache,
                   NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr,
                   BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
                   HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + tok).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)
    row = cos_sin_ptr + pos * stride_cache + dims
    act = q_ptr.dtype.element_ty
    cos = tl.load(row, mask=dims < HALF, other=0.0).to(act).to(tl.float32)[None, :]
    sin = tl.load(row + HALF, mask=dims < HALF, other=0.0).to(act).to(tl.float32)[None, :]
    _rotate_heads(q_ptr, tok, stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, BLOCK_QH, HALF,
                  BLOCK_HALF)
    _rotate_heads(k_ptr, tok, stride_kt, stride_kh, cos, sin, NUM_K_HEADS, BLOCK_KH, HALF,
                  BLOCK_HALF)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> None:
    """Rotate q [T, Hq, D] and k [T, Hk, D] in place at positions [T] (int32/int64).
    cos_sin_cache: [max_position, rotary_dim] (cos half, then sin half), fp32 recommended."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    rotary_dim = cos_sin_cache.shape[1]
    assert k.shape[0] == num_tokens and k.shape[2] == head_dim and positions.shape[0] >= num_tokens
    assert rotary_dim % 2 == 0 and rotary_dim <= head_dim
    assert q.stride(2) == 1 and k.stride(2) == 1 and cos_sin_cache.stride(1) == 1
    if num_tokens == 0:
        return
    half = rotary_dim // 2
    block_half = triton.next_power_of_2(half)
    block_qh = triton.next_power_of_2(num_q_heads)
    block_kh = triton.next_power_of_2(num_k_heads)
    _rotary_kernel[(num_tokens,)](
        q, k, positions, cos_sin_cache, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        cos_sin_cache.stride(0), NUM_Q_HEADS=num_q_heads, NUM_K_HEADS=num_k_heads,
        BLOCK_QH=block_qh, BLOCK_KH=block_kh, HALF=half, BLOCK_HALF=block_half,
        num_warps=max(1, min(8, block_qh * block_half // 256)))


def build_cos_sin_cache(rotary_dim: int, max_position: int, base: float,
                        device: torch.device | str | None = None,
                        inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """[max_position, rotary_dim] fp32: cos then sin of pos * inv_freq. Pass inv_freq for
    scaled variants (llama3, yarn, ...) computed elsewhere; default is plain RoPE. fp32 math
    as HF does it, so angles round the same way as the models we are compared against."""
    if inv_freq is None:
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float()
        inv_freq = 1.0 / (base ** (exponents / rotary_dim))
    pos = torch.arange(max_position, dtype=torch.float32, device=device)
    freqs = torch.outer(pos, inv_freq.to(device=pos.device, dtype=torch.float32))
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def rotary_embedding_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-place reference (HF apply_rotary_pos_emb with rotate_half): cos/sin rounded to
    the activation dtype, then fp32 math."""
    rotary_dim = cos_sin_cache.shape[1]
    cos, sin = cos_sin_cache[positions.long()].to(q.dtype).float().chunk(2, dim=-1)  # [T, rot/2]
    cos = torch.cat([cos, cos], dim=-1)[:, None, :]
    sin = torch.cat([sin, sin], dim=-1)[:, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = rot * cos + torch.cat([-x2, x1], dim=-1) * sin
        return torch.cat([rotated.to(x.dtype), rest], dim=-1)

    return rotate(q), rotate(k)
