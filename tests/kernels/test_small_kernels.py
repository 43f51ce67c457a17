"""KV-cache write, RMSNorm (+ residual add), rotary embedding and SiLU-and-multiply kernels vs
their PyTorch references, on random fp32 inputs, including strided views of a fused qkv tensor,
non-power-of-two sizes and padding slots."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels.activation import silu_and_mul, silu_and_mul_ref  # noqa: E402
from cormorant.kernels.kv_cache import store_kv_cache, store_kv_cache_ref  # noqa: E402
from cormorant.kernels.rmsnorm import (  # noqa: E402
    fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref)
from cormorant.kernels.rotary import (  # noqa: E402
    build_cos_sin_cache, rotary_embedding, rotary_embedding_ref)

TOL = 1e-6


@pytest.mark.parametrize("num_kv_heads,head_dim", [(3, 64), (2, 128), (1, 80)])
def test_store_kv_cache(num_kv_heads, head_dim, device, rel_err):
    num_tokens, num_blocks, block_size = 11, 6, 4
    # k and v as strided slices of one fused projection, as a qkv split produces them.
    kv = torch.randn(num_tokens, 2 * num_kv_heads * head_dim + 5, device=device)
    k = kv[:, :num_kv_heads * head_dim].view(num_tokens, num_kv_heads, head_dim)
    v = kv[:, num_kv_heads * head_dim:-5].view(num_tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size)[:num_tokens].to(device)
    slots[[2, 7]] = -1  # padding tokens: their k/v must land nowhere
    cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, device=device)
    expected = cache.clone()
    store_kv_cache_ref(k, v, expected, slots)
    store_kv_cache(k, v, cache, slots)
    assert torch.equal(cache, expected)
    assert rel_err(cache, expected) == 0.0


@pytest.mark.parametrize("hidden", [64, 96, 1000])
def test_rms_norm_2d(hidden, device, rel_err):
    x = torch.randn(7, hidden, device=device) * 3
    w = torch.randn(hidden, device=device)
    assert rel_err(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6)) < TOL
    y = x.clone()
    rms_norm(y, w, 1e-6, out=y)  # in place
    assert rel_err(y, rms_norm_ref(x, w, 1e-6)) < TOL


def test_rms_norm_strided_heads_in_place(device, rel_err):
    # Qwen3 q-norm: per-head RMSNorm on the q slice of a fused qkv tensor, in place.
    num_tokens, num_heads, head_dim = 5, 4, 64
    qkv = torch.randn(num_tokens, (num_heads + 4) * head_dim, device=device)
    q = qkv[:, :num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    untouched = qkv[:, num_heads * head_dim:].clone()
    w = torch.randn(head_dim, device=device)
    expected = rms_norm_ref(q, w, 1e-6)
    rms_norm(q, w, 1e-6, out=q)
    assert rel_err(q, expected) < TOL
    assert torch.equal(qkv[:, num_heads * head_dim:], untouched)


@pytest.mark.parametrize("hidden", [128, 576])
def test_fused_add_rms_norm(hidden, device, rel_err):
    x = torch.randn(6, hidden, device=device)
    residual = torch.randn(6, hidden, device=device)
    w = torch.randn(hidden, device=device)
    ref_out, ref_res = fused_add_rms_norm_ref(x, residual, w, 1e-5)
    out, res = fused_add_rms_norm(x, residual, w, 1e-5)
    assert out.data_ptr() == x.data_ptr() and res.data_ptr() == residual.data_ptr()
    assert rel_err(res, ref_res) < TOL
    assert rel_err(out, ref_out) < TOL


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,rotary_dim",
                         [(4, 4, 64, 64), (9, 3, 64, 64), (16, 8, 128, 128), (6, 2, 128, 64)])
def test_rotary_in_place_on_qkv_views(num_heads, num_kv_heads, head_dim, rotary_dim, device,
                                      rel_err):
    num_tokens = 9
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, device=device)
    q = qkv[:, :num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(
        num_tokens, num_kv_heads, head_dim)
    v_before = qkv[:, (num_heads + num_kv_heads) * head_dim:].clone()
    cache = build_cos_sin_cache(rotary_dim, 4096, 10000.0, device=device)
    positions = torch.randint(0, 4096, (num_tokens,), device=device)
    ref_q, ref_k = rotary_embedding_ref(positions, q, k, cache)
    rotary_embedding(positions, q, k, cache)
    assert rel_err(q, ref_q) < TOL and rel_err(k, ref_k) < TOL
    assert torch.equal(qkv[:, (num_heads + num_kv_heads) * head_dim:], v_before)


def test_rotary_reference_matches_hf_formula(device):
    # The reference itself against the HF recipe (cos/sin of cat(freqs, freqs), rotate_half).
    head_dim, base = 64, 10000.0
    positions = torch.tensor([0, 1, 17, 999], device=device)
    q = torch.randn(4, 2, head_dim, device=device)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    emb = torch.cat([torch.outer(positions.float(), inv_freq)] * 2, dim=-1)[:, None, :]
    half = head_dim // 2
    rotated = torch.cat([-q[..., half:], q[..., :half]], dim=-1)
    hf = q * emb.cos() + rotated * emb.sin()
    ref_q, _ = rotary_embedding_ref(positions, q, q[:, :1],
                                    build_cos_sin_cache(head_dim, 1000, base, device=device))
    assert torch.allclose(ref_q, hf, atol=1e-5)


@pytest.mark.parametrize("inter", [64, 300, 1536])
def test_silu_and_mul(inter, device, rel_err):
    x = torch.randn(5, 2 * inter, device=device) * 2
    assert rel_err(silu_and_mul(x), silu_and_mul_ref(x)) < TOL
    hf = torch.nn.functional.silu(x[:, :inter]) * x[:, inter:]
    assert rel_err(silu_and_mul_ref(x), hf) < TOL
