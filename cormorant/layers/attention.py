"""Paged attention: the metadata the runner builds each step and the attention backends.

KV cache layout, one tensor per layer: [2, num_blocks, block_size, num_kv_heads, head_dim]
(index 0 keys, 1 values). A token's slot is block_id * block_size + offset in its block.
The batch is packed ("varlen"): sequence i owns query rows query_start_loc[i]:query_start_loc[i+1]
and those rows are the last query_len tokens of its seq_lens[i]-token context. Prefill chunks with
a cached prefix and decodes (query_len 1) mix freely in one batch.

A backend offers two paths (AttentionBackend): `forward` takes q and k ready to attend, and
`forward_prepped` takes them as the projection made them plus a QKPrep (per-head q/k norm,
rotary), so a backend may prepare them and write the cache in one launch (TritonAttention);
TorchAttention answers it with the layers' own norm and rotary, then `forward`.
Both take the layer's KVScales (`kv_scales`), used when the cache is fp8 (layers.kv_quant).
Imports: torch, cormorant.layers (norm, rotary: the QKPrep parts; kv_quant).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from cormorant.layers.kv_quant import KVScales, is_fp8, quantize_kv, read_kv
from cormorant.layers.norm import RMSNorm
from cormorant.layers.rotary import RotaryEmbedding

# Decode rows attended in one padded batch: up to 16 at once (a 16-stream step on a CPU:
# 16 beat 8, and 8 beat 4, with the per-head products below; measured 2026-12-06).
DECODE_CHUNK = 16


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64; -1 marks padding tokens (not written)
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32: context length including this step's tokens
    block_tables: torch.Tensor  # [num_seqs, max_num_blocks] int32, padded with 0
    max_query_len: int
    max_seq_len: int
    # Host copies, so backends that loop in Python never synchronise with the device.
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]

    # What a backend derives from this step's metadata once for all layers (the host copy
    # of the slots, the rotary's cos and sin), by key: a step brings a new metadata object.
    derived: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """make(), computed on the first call of this step (per key)."""
        if key not in self.derived:
            self.derived[key] = make()
        return self.derived[key]


@dataclass(frozen=True)
class QKPrep:
    """What turns a layer's raw q and k into attention inputs: the per-head RMSNorm of q and
    k (Qwen3; None elsewhere), then the rotary embedding. The modules are the layer's own."""

    rotary_emb: RotaryEmbedding
    q_norm: RMSNorm | None = None
    k_norm: RMSNorm | None = None

    def apply(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unfused preparation: q [T, H, D], k [T, Hkv, D] normalised and rotated."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.rotary_emb(positions, q, k)


@runtime_checkable
class AttentionBackend(Protocol):
    # Safe to capture in a CUDA graph: no host synchronisation, and a launch shape that does
    # not depend on context lengths (runner.cuda_graphs).
    supports_cuda_graphs: bool

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim], normalised and rotated
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], likewise
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,  # [2, num_blocks, block_size, num_kv_heads, head_dim]
        meta: AttentionMetadata,
        scale: float,
        kv_scales: KVScales | None = None,  # the layer's; read only for an fp8 cache
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """Write k and v into the cache, then attend."""
        ...

    def forward_prepped(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim], as projected (may be a view)
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], as projected
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        positions: torch.Tensor,  # [num_tokens]
        prep: QKPrep,
        kv_scales: KVScales | None = None,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """forward() of q and k prepared by `prep` at `positions` (the backend may fuse the
        preparation and the cache write)."""
        ...


class HostSlots(NamedTuple):
    """A step's slot_mapping on the host, and whether every slot is real (no padding row)."""
    slots: list[int]
    all_valid: bool


def host_slots(meta: AttentionMetadata) -> HostSlots | None:
    """The step's HostSlots, read once a step (memo) from a CPU slot_mapping; None on a GPU."""
    if meta.slot_mapping.device.type != "cpu":
        return None

    def read() -> HostSlots:
        slots = meta.slot_mapping.tolist()
        return HostSlots(slots, not slots or min(slots) >= 0)
    return meta.memo("slots", read)


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, kv_scales: KVScales | None = None,
                   host: HostSlots | None = None) -> None:
    """Scatter this step's keys and values into their slots (reference implementation); an
    fp8 cache gets them quantized with the layer's scales. host: the slots on the host, if
    the caller has them (no padding check on the tensor; one row is copied directly)."""
    num_kv_heads, head_dim = kv_cache.shape[-2:]
    flat = kv_cache.view(2, -1, num_kv_heads, head_dim)  # [2, num_slots, Hkv, D]
    fp8 = is_fp8(kv_cache)
    if host is not None and host.all_valid and len(host.slots) == 1 and not fp8:
        flat[0, host.slots[0]].copy_(k[0])
        flat[1, host.slots[0]].copy_(v[0])
        return
    if host is None or not host.all_valid:
        valid = slot_mapping >= 0
        if not bool(valid.all()):
            slot_mapping, k, v = slot_mapping[valid], k[valid], v[valid]
    if fp8:
        if kv_scales is None:
            raise ValueError("an fp8 KV cache needs its layer's KVScales")
        # Copied as bytes: index_copy_ has no float8 kernel on the CPU.
        k = quantize_kv(k, kv_scales.k_scale).view(torch.uint8)
        v = quantize_kv(v, kv_scales.v_scale).view(torch.uint8)
        flat = flat.view(torch.uint8)
    flat[0].index_copy_(0, slot_mapping, k.to(flat.dtype))
    flat[1].index_copy_(0, slot_mapping, v.to(flat.dtype))


def gather_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first seq_len keys and values of one sequence: two [seq_len, Hkv, D] tensors."""
    block_size = kv_cache.shape[2]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = block_table[:num_blocks].long()
    k = _blocks(kv_cache[0], blocks).flatten(0, 1)[:seq_len]
    v = _blocks(kv_cache[1], blocks).flatten(0, 1)[:seq_len]
    return k, v


def _blocks(cache: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """cache[tables] for a [num_blocks, block_size, Hkv, D] cache and any shape of block ids,
    through index_select: ~2.7x faster than advanced indexing on a CPU (one copy per block)."""
    return cache.index_select(0, tables.flatten()).view(*tables.shape, *cache.shape[1:])


class TorchAttention:
    """Reference backend, correct everywhere (CPU and GPU); the Triton backend is the fast
    path on GPUs. Decode rows (query_len 1) are attended in padded batches of up to
    DECODE_CHUNK rows; prefill chunks one scaled_dot_product_attention call per sequence.
    It synchronises with the host (and loops over host lists), so it is never captured in a
    CUDA graph."""

    supports_cuda_graphs = False

    def forward_prepped(self, q, k, v, kv_cache, meta: AttentionMetadata, scale: float,
                        positions: torch.Tensor, prep: QKPrep,
                        kv_scales: KVScales | None = None) -> torch.Tensor:
        """No fused preparation here: the layers' norm and rotary (their kernels on CUDA)."""
        if prep.q_norm is None and not q.is_cuda:  # cos and sin once a step, not per layer
            rope = prep.rotary_emb
            cos_sin = meta.memo(("rope", id(rope), q.dtype),
                                lambda: rope.cos_sin(positions, q.dtype))
            q, k = rope.rotate(q, k, *cos_sin)
        else:
            q, k = prep.apply(positions, q, k)
        return self.forward(q, k, v, kv_cache, meta, scale, kv_scales)

    def forward(self, q, k, v, kv_cache, meta: AttentionMetadata, scale: float,
                kv_scales: KVScales | None = None) -> torch.Tensor:
        write_kv_cache(k, v, kv_cache, meta.slot_mapping, kv_scales, host_slots(meta))
        k_scale, v_scale = ((kv_scales.k_scale, kv_scales.v_scale) if kv_scales is not None
                            else (None, None))
        group = q.shape[1] // kv_cache.shape[3]
        if meta.max_query_len == 1 and q.shape[0] == meta.num_seqs <= DECODE_CHUNK:
            return _attend_decodes(q, kv_cache, meta, list(range(meta.num_seqs)), scale, group,
                                   k_scale, v_scale)  # a small pure-decode batch: no loop
        out = torch.empty_like(q)
        starts, decodes = [], []
        start = 0
        for i, query_len in enumerate(meta.query_lens_cpu):
            starts.append(start)
            if query_len == 1:
                decodes.append(i)
            elif query_len > 1:
                seq_len = meta.seq_lens_cpu[i]
                keys, values = _one_sequence_kv(kv_cache, meta.block_tables[i], seq_len)
                keys, values = read_kv(keys, k_scale, q.dtype), read_kv(values, v_scale, q.dtype)
                out[start:start + query_len] = _attend(
                    q[start:start + query_len], keys, values, scale, group)
            start += query_len
        for first in range(0, len(decodes), DECODE_CHUNK):
            chunk = decodes[first:first + DECODE_CHUNK]
            rows = torch.tensor([starts[i] for i in chunk], device=q.device)
            out[rows] = _attend_decodes(q[rows], kv_cache, meta, chunk, scale, group,
                                        k_scale, v_scale)
        return out


def _attend_decodes(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata,
                    seqs: list[int], scale: float, group: int,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """One query per sequence against its whole context, as one padded batch."""
    block_size = kv_cache.shape[2]
    seq_lens = [meta.seq_lens_cpu[i] for i in seqs]
    max_blocks = -(-max(seq_lens) // block_size)
    num_seqs, num_heads, head_dim = q.shape
    if num_seqs == 1:  # batch-1 decode: no padding, so one SDPA call instead of six ops
        keys, values = _one_sequence_kv(kv_cache, meta.block_tables[seqs[0]], seq_lens[0])
        keys, values = read_kv(keys, k_scale, q.dtype), read_kv(values, v_scale, q.dtype)
        out = F.scaled_dot_product_attention(
            q[:, :, None], keys[None].transpose(1, 2), values[None].transpose(1, 2),
            scale=scale, enable_gqa=group > 1)  # [1, H, 1, D]
        return out.view(1, num_heads, head_dim)
    tables = meta.block_tables[seqs, :max_blocks].long()  # [B, max_blocks]
    keys = read_kv(_blocks(kv_cache[0], tables).flatten(1, 2), k_scale, q.dtype)  # [B, S, Hkv, D]
    values = read_kv(_blocks(kv_cache[1], tables).flatten(1, 2), v_scale, q.dtype)
    # Per KV head, its group of query heads against the gathered keys as they lie ([B, S, D]
    # views with a row stride of Hkv * D: no copy into a [B, Hkv, S, D] layout), and the
    # probabilities against the values likewise.
    num_kv_heads = kv_cache.shape[3]
    grouped = q.view(num_seqs, num_kv_heads, group, head_dim)  # [B, Hkv, G, D]
    scores = q.new_empty(num_kv_heads, num_seqs, group, keys.shape[1])  # [Hkv, B, G, S]
    for h in range(num_kv_heads):
        torch.bmm(grouped[:, h], keys[:, :, h].transpose(1, 2), out=scores[h])
    lens = torch.tensor(seq_lens, device=q.device)
    pad = torch.arange(keys.shape[1], device=q.device)[None, :] >= lens[:, None]  # [B, S]
    scores.mul_(scale).masked_fill_(pad[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = q.new_empty(num_seqs, num_kv_heads, group, head_dim)
    for h in range(num_kv_heads):
        out[:, h] = torch.bmm(probs[h], values[:, :, h])  # [B, G, D]
    return out.view(num_seqs, num_heads, head_dim)


def _one_sequence_kv(kv_cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """gather_kv; but when the sequence's blocks are consecutive ids in a CPU cache (a lone
    sequence's usually are: the block manager hands out free blocks in order), views of the
    cache instead of a copy (the same values and strides)."""
    if kv_cache.device.type == "cpu":
        num_blocks = -(-seq_len // kv_cache.shape[2])
        ids = block_table[:num_blocks].tolist()
        if ids == list(range(ids[0], ids[0] + num_blocks)):
            k, v = kv_cache[:, ids[0]:ids[0] + num_blocks].flatten(1, 2)[:, :seq_len]
            return k, v
    return gather_kv(kv_cache, block_table, seq_len)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            group: int) -> torch.Tensor:
    """Causal attention of the last len(q) positions of a len(k) context."""
    query_len, seq_len = q.shape[0], k.shape[0]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    mask = None
    if query_len > 1:
        rows = torch.arange(seq_len - query_len, seq_len, device=q.device)[:, None]
        mask = torch.arange(seq_len, device=q.device)[None, :] <= rows  # [Q, S]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1).to(q.dtype), v.transpose(0, 1).to(q.dtype),
        attn_mask=mask, scale=scale)
    return out.transpose(0, 1)
