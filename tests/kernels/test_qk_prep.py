"""The fused attention-input kernel (q/k RMSNorm, rotary, KV write) against the unfused
PyTorch path: q rotated in place on a view of a fused qkv tensor, k/v in the cache at their
slots, padding slots untouched, with and without the Qwen3 per-head norm, fp32 and bf16."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels.qk_prep import qk_prep, qk_prep_ref  # noqa: E402
from cormorant.kernels.rotary import build_cos_sin_cache  # noqa: E402


def _case(num_heads, num_kv_heads, head_dim, dtype, device, norm: bool):
    torch.manual_seed(0)
    tokens, blocks, block_size = 9, 5, 4
    qkv = torch.randn(tokens, (num_heads + 2 * num_kv_heads) * head_dim, device=device)
    qkv = (qkv * 2).to(dtype)
    q_end, k_end = num_heads * head_dim, (num_heads + num_kv_heads) * head_dim
    views = (qkv[:, :q_end].view(tokens, num_heads, head_dim),
             qkv[:, q_end:k_end].view(tokens, num_kv_heads, head_dim),
             qkv[:, k_end:].view(tokens, num_kv_heads, head_dim))
    cos_sin = build_cos_sin_cache(head_dim, 2048, 10000.0, device=device)
    positions = torch.randint(0, 2048, (tokens,), device=device)
    slots = torch.randperm(blocks * block_size)[:tokens].to(device)
    slots[[1, 6]] = -1  # CUDA-graph padding rows
    weights = ((torch.rand(head_dim, device=device) + 0.5).to(dtype),
               (torch.rand(head_dim, device=device) + 0.5).to(dtype)) if norm else (None, None)
    cache = torch.randn(2, blocks, block_size, num_kv_heads, head_dim, device=device).to(dtype)
    return qkv, views, positions, cos_sin, weights, 1e-6, cache, slots


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(4, 2, 64), (6, 3, 128), (2, 2, 16)])
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_prep_matches_the_unfused_path(num_heads, num_kv_heads, head_dim, norm, dtype,
                                          device):
    qkv, (q, k, v), positions, cos_sin, (qw, kw), eps, cache, slots = _case(
        num_heads, num_kv_heads, head_dim, dtype, device, norm)
    ref_qkv, ref_cache = qkv.clone(), cache.clone()
    ref_q = ref_qkv[:, :q.shape[1] * head_dim].view_as(q)
    ref_k = ref_qkv[:, q.shape[1] * head_dim:(q.shape[1] + k.shape[1]) * head_dim].view_as(k)
    ref_v = ref_qkv[:, (q.shape[1] + k.shape[1]) * head_dim:].view_as(v)
    qk_prep_ref(ref_q, ref_k, ref_v, positions, cos_sin, qw, kw, eps, ref_cache, slots)
    qk_prep(q, k, v, positions, cos_sin, qw, kw, eps, cache, slots)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: one rounding step apart at most
    assert torch.allclose(q.float(), ref_q.float(), atol=tol * 4, rtol=tol)
    assert torch.allclose(cache.float(), ref_cache.float(), atol=tol * 4, rtol=tol)
    untouched = torch.ones(cache.shape[1] * cache.shape[2], dtype=torch.bool)
    untouched[slots[slots >= 0].cpu()] = False
    flat, ref_flat = cache.view(2, -1, *cache.shape[3:]), ref_cache.view(2, -1, *cache.shape[3:])
    assert torch.equal(flat[:, untouched.to(device)], ref_flat[:, untouched.to(device)])
    if dtype == torch.float32:
        assert (q - ref_q).abs().max() < 1e-5 and (cache - ref_cache).abs().max() < 1e-5
