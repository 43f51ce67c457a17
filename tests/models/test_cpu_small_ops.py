"""The CPU path's norm and rotary, bit for bit against Hugging Face's formulas.

RMSNorm in float32 runs ATen's rms_norm; RotaryEmbedding rotates q and k in one go when they
are neighbouring slices of one qkv projection. Both must give exactly what the reference
formulas give (transformers' LlamaRMSNorm and apply_rotary_pos_emb), so greedy tokens do not
move: compared with torch.equal, over scales, row counts and dtypes.
"""
from __future__ import annotations

import pytest
import torch

from cormorant.layers.norm import RMSNorm
from cormorant.layers.rotary import RotaryEmbedding, _joint


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _hf_rotary(rope: RotaryEmbedding, positions, q, k):
    half = rope.head_dim // 2
    cos, sin = rope.cos_sin_cache[positions].to(q.dtype).split(half, dim=-1)
    cos = torch.cat((cos, cos), dim=-1)[:, None]
    sin = torch.cat((sin, sin), dim=-1)[:, None]

    def rotate_half(x):
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 16, 37])
def test_rms_norm_is_bit_identical_to_the_reference(rows, dtype):
    gen = torch.Generator().manual_seed(rows)
    norm = RMSNorm(576, eps=1e-5).to(dtype)
    for scale in (1e-3, 1.0, 40.0):
        with torch.no_grad():
            norm.weight.copy_(torch.randn(576, generator=gen))
        x = (torch.randn(rows, 576, generator=gen) * scale).to(dtype)
        residual = torch.randn(rows, 576, generator=gen).to(dtype)
        assert torch.equal(norm(x), _hf_rms_norm(x, norm.weight, 1e-5))
        normed, total = norm(x, residual)
        assert torch.equal(total, x + residual)
        assert torch.equal(normed, _hf_rms_norm(x + residual, norm.weight, 1e-5))


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("scaling", [None, LLAMA3], ids=["default", "llama3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 5])
def test_rotary_of_qkv_slices_is_bit_identical_to_the_reference(tokens, dtype, scaling):
    gen = torch.Generator().manual_seed(tokens)
    rope = RotaryEmbedding(64, 1024, 10000.0, scaling)
    heads, kv_heads = 9, 3
    qkv = (torch.randn(tokens, (heads + 2 * kv_heads) * 64, generator=gen) * 3).to(dtype)
    q, k, _ = qkv.split([heads * 64, kv_heads * 64, kv_heads * 64], dim=-1)
    q, k = q.view(tokens, heads, 64), k.view(tokens, kv_heads, 64)
    positions = torch.randint(0, 1024, (tokens,), generator=gen)
    want_q, want_k = _hf_rotary(rope, positions, q, k)
    assert _joint(q, k) is not None and _joint(q.clone(), k.clone()) is None
    for got_q, got_k in (rope(positions, q, k),  # neighbours in qkv: rotated together
                         rope(positions, q.clone(), k.clone())):  # apart
        assert got_q.shape == want_q.shape and got_k.shape == want_k.shape
        assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert torch.equal(qkv[:, :heads * 64].view(tokens, heads, 64), q)  # inputs untouched
