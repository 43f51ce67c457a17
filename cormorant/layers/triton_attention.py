"""TritonAttention: the GPU fast-path attention backend (same interface as TorchAttention).

Imports torch, cormorant.layers.attention (metadata contract) and cormorant.kernels; importing
this module needs Triton, so backend selection should import it only when Triton is present
(cormorant.kernels.triton_available()).

Each forward is two launches (three for split-KV decode) with no host synchronisation:
store_kv_cache scatters k/v by slot_mapping, then paged_attention serves the whole packed batch.
`forward_prepped` (what the Llama-family attention calls when the backend has it) also takes
the raw q/k: kernels.qk_prep normalises (Qwen3), rotates and writes the cache in one launch.
From AttentionMetadata it reads slot_mapping, query_start_loc, seq_lens and block_tables (device)
and max_query_len (host int, only to pick the launch shape); nothing else. The choice depends on
num_seqs and max_query_len alone, so a CUDA graph captured for a padded decode batch replays
with the same kernels whatever the context lengths.
"""
from __future__ import annotations

import torch

from cormorant.kernels.kv_cache import store_kv_cache
from cormorant.kernels.paged_attention import PagedAttentionConfig, paged_attention
from cormorant.kernels.qk_prep import qk_prep
from cormorant.layers.attention import AttentionMetadata


class TritonAttention:
    """Paged attention through the Triton kernels. `config` pins the launch shape (tests,
    tuning); by default the kernel module picks it per batch."""

    def __init__(self, config: PagedAttentionConfig | None = None) -> None:
        self.config = config

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        # q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim]
        # kv_cache: [2, num_blocks, block_size, num_kv_heads, head_dim]
        store_kv_cache(k, v, kv_cache, meta.slot_mapping)
        return self._attend(q, kv_cache, meta, scale)

    def forward_prepped(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
                        positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                        q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None,
                        eps: float) -> torch.Tensor:
        """forward() with the q/k preparation fused in: the raw q, k, v of the projection;
        per-head RMSNorm (when weights are given), rotary and the KV write in one launch."""
        qk_prep(q, k, v, positions, cos_sin_cache, q_norm_weight, k_norm_weight, eps, kv_cache,
                meta.slot_mapping)
        return self._attend(q, kv_cache, meta, scale)

    def _attend(self, q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                scale: float) -> torch.Tensor:
        return paged_attention(q, kv_cache[0], kv_cache[1], meta.query_start_loc, meta.seq_lens,
                               meta.block_tables, scale, meta.max_query_len,
                               config=self.config)  # [num_tokens, num_heads, head_dim]
