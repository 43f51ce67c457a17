"""The reference paged attention as one opaque op, so a compiled decoder layer has no graph break.

`torch.ops.cormorant.paged_attention_cpu` writes this step's keys and values into the cache
and attends, by TorchAttention's own code, behind torch.library's custom-op boundary: Dynamo
traces the whole layer around it (a graph break there split each layer into four graphs, whose
call overhead cost more than the compile saved), and Inductor leaves the cache mutation in
place (traced in the graph, the write and the paged read made it copy the whole cache).
The host lists TorchAttention loops over are read back from the step's int tensors (a CPU
tensor's `tolist`, no device sync). `OpaqueAttention` wraps a backend: compiled code calls the
op, eager code the backend itself.
Imports: torch, layers.attention.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from cormorant.layers.attention import AttentionBackend, AttentionMetadata, QKPrep, TorchAttention
from cormorant.layers.kv_quant import KVScales

_REFERENCE = TorchAttention()


class _Scales(NamedTuple):
    """The two scales of an fp8 cache, in the shape the reference backend reads (KVScales)."""

    k_scale: torch.Tensor
    v_scale: torch.Tensor


@torch.library.custom_op("cormorant::paged_attention_cpu", mutates_args=("kv_cache",))
def paged_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                        query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                        block_tables: torch.Tensor, scale: float,
                        k_scale: torch.Tensor | None = None,
                        v_scale: torch.Tensor | None = None) -> torch.Tensor:
    kv_scales = None if k_scale is None or v_scale is None else _Scales(k_scale, v_scale)
    starts = query_start_loc.tolist()
    query_lens = [b - a for a, b in zip(starts, starts[1:])]
    lens = seq_lens.tolist()
    meta = AttentionMetadata(slot_mapping, query_start_loc, seq_lens, block_tables,
                             max_query_len=max(query_lens), max_seq_len=max(lens),
                             query_lens_cpu=query_lens, seq_lens_cpu=lens)
    return _REFERENCE.forward(q, k, v, kv_cache, meta, scale, kv_scales)


@paged_attention_cpu.register_fake
def _(q, k, v, kv_cache, slot_mapping, query_start_loc, seq_lens, block_tables, scale,
      k_scale=None, v_scale=None):
    return torch.empty_like(q)


class OpaqueAttention:
    """A backend whose attention is the custom op while Dynamo traces, the backend otherwise."""

    supports_cuda_graphs = False

    def __init__(self, backend: AttentionBackend) -> None:
        self.backend = backend

    def forward(self, q, k, v, kv_cache, meta: AttentionMetadata, scale: float,
                kv_scales: KVScales | None = None) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return self.backend.forward(q, k, v, kv_cache, meta, scale, kv_scales)
        k_scale, v_scale = ((kv_scales.k_scale, kv_scales.v_scale) if kv_scales is not None
                            else (None, None))
        return paged_attention_cpu(q, k, v, kv_cache, meta.slot_mapping, meta.query_start_loc,
                                   meta.seq_lens, meta.block_tables, scale, k_scale, v_scale)

    def forward_prepped(self, q, k, v, kv_cache, meta: AttentionMetadata, scale: float,
                        positions: torch.Tensor, prep: QKPrep,
                        kv_scales: KVScales | None = None) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return self.backend.forward_prepped(q, k, v, kv_cache, meta, scale, positions, prep,
                                                kv_scales)
        q, k = prep.apply(positions, q, k)
        return self.forward(q, k.contiguous(), v.contiguous(), kv_cache, meta, scale, kv_scales)
