"""TritonAttention: the GPU fast-path attention backend (same interface as TorchAttention).

Imports torch, cormorant.layers.attention (metadata contract) and cormorant.kernels; importing
this module needs Triton, so backend selection should import it only when Triton is present
(cormorant.kernels.triton_available()).

Each forward is two launches (three for split-KV decode) with no host synchronisation:
store_kv_cache scatters k/v by slot_mapping, then paged_attention serves the whole packed batch.
`forward_prepped` (the path the Llama-family attention calls) takes the raw q/k and a QKPrep:
kernels.qk_prep normalises (Qwen3), rotates and writes the cache in one launch.
From AttentionMetadata it reads slot_mapping, query_start_loc, seq_lens and block_tables (device)
and max_query_len (host int, only to pick the launch shape); nothing else. The choice depends on
num_seqs and max_query_len alone, so a CUDA graph captured for a padded decode batch replays
with the same kernels whatever the context lengths. An fp8 cache (layers.kv_quant) gets the
layer's KVScales tensors passed to all three kernels.
"""
from __future__ import annotations

import torch

from cormorant.kernels.kv_cache import store_kv_cache
from cormorant.kernels.paged_attention import PagedAttentionConfig, paged_attention
from cormorant.kernels.qk_prep import qk_prep
from cormorant.layers.attention import AttentionMetadata, QKPrep
from cormorant.layers.kv_quant import KVScales


class TritonAttention:
    """Paged attention through the Triton kernels. `config` pins the launch shape (tests,
    tuning); by default the kernel module picks it per batch."""

    supports_cuda_graphs = True

    def __init__(self, config: PagedAttentionConfig | None = None) -> None:
        self.config = config

    @staticmethod
    def check_kv_cache(dtype: torch.dtype, device: torch.device) -> None:
        """Refuse, at start-up, a cache these kernels cannot compile for: Triton's fp8 types
        need compute capability 8.9+ (Ada, Hopper)."""
        if dtype == torch.float8_e4m3fn and device.type == "cuda":
            capability = torch.cuda.get_device_capability(device)
            if capability < (8, 9):
                raise ValueError(f"kv_cache_dtype fp8 needs a GPU of compute capability 8.9+ "
                                 f"(Ada, Hopper) for the Triton kernels; this one is "
                                 f"{capability[0]}.{capability[1]}: use kv_cache_dtype auto")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                kv_scales: KVScales | None = None) -> torch.Tensor:
        # q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim]
        # kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim]
        store_kv_cache(k, v, kv_cache, meta.slot_mapping, *_scales(kv_scales))
        return self._attend(q, kv_cache, meta, scale, kv_scales)

    def forward_prepped(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                        positions: torch.Tensor, prep: QKPrep,
                        kv_scales: KVScales | None = None) -> torch.Tensor:
        """forward() with the q/k preparation fused in: per-head RMSNorm (when prep has
        one), rotary and the KV write in one launch; q is rotated in place."""
        q_norm, k_norm = prep.q_norm, prep.k_norm
        norms = (None, None, 0.0) if q_norm is None else (q_norm.weight, k_norm.weight,
                                                          q_norm.eps)
        qk_prep(q, k, v, positions, prep.rotary_emb.cos_sin_cache, *norms, kv_cache,
                meta.slot_mapping, *_scales(kv_scales))
        return self._attend(q, kv_cache, meta, scale, kv_scales)

    def _attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                scale: float, kv_scales: KVScales | None) -> torch.Tensor:
        k_scale, v_scale = _scales(kv_scales)
        return paged_attention(q, kv_cache[0], kv_cache[1], meta.query_start_loc, meta.seq_lens,
                               meta.block_tables, scale, meta.max_query_len,
                               config=self.config, k_scale=k_scale,
                               v_scale=v_scale)  # [num_tokens, num_heads, head_dim]


def _scales(kv_scales: KVScales | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (None, None) if kv_scales is None else (kv_scales.k_scale, kv_scales.v_scale)
