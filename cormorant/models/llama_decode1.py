"""The Llama decoder's CPU decode step on int4 weights: compiled for M rows, or one row in Python.

At batch 1 on a CPU a SmolLM2 token (`--quantization gguf`) spends ~45 % of its time outside
its int4 matmuls: 111 Python-level torch calls a decoder layer (~55 ATen dispatches at 2-5 us
each, the rest attribute reads and stride checks), ~300 nn.Module calls a token and the
deferred-input machinery (layers.norm, layers.activation). `LeanDecode` runs a pure-decode step
of one sequence with the very ops of that path, in the same order on the same values (bit for
bit: tests/models/test_llama_decode1.py), as 39 torch calls a layer (~30 dispatches) from one
loop: weights and kernel operands read once into plain tuples, the step's slot, block run
and rotary cos/sin once a step, keys and values as `as_strided` views of the cache, and the
bf16 outputs of o_proj and down_proj added to the float32 residual directly (the add's type
promotion is the cast the layers make: bf16 -> float32 is exact).

Taken only where it is that path: a CPU float32 model, one rank, every decoder layer a plain
LlamaDecoderLayer (not wrapped by runner.cpu_compile) on TorchAttention with no q/k norm, int4
projections (layers.gguf_linear's Int4CpuMethod or its pair) without biases, a float32 KV
cache; and per step, one sequence decoding one token (its KV blocks read in place when they
are consecutive ids, as a lone sequence's usually are, else gathered as TorchAttention does).
Anything else runs the layers as before (`LeanDecode.run` answers None).

Where the compiled step is built (kernels.cpu_decode, unless CORMORANT_CPU_DECODE=python),
`run` hands it the whole layer loop instead, for M >= 1 rows of pure decode (each row one
sequence with one new token; the engine's batched decode steps too), under the same model
rules, on float32 caches of one shape with every slot valid: the same int4 kernel calls, its
own norm, rotary, KV write and attention loops, keys and values read through each row's block
table. Not bit for bit: float32 rounding apart, and where that flips a bf16 rounding of a
projection input, a bf16 step of that input (tests/models/test_cpu_decode.py). The Python
step above stays the fallback for one row; the layers for the rest.
Imports: torch, cormorant.layers (attention, gguf_linear), cormorant.kernels (cpu_decode),
models.llama (lazily: its classes).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cormorant.kernels.cpu_decode import load as load_cpu_decode
from cormorant.layers.attention import AttentionMetadata, TorchAttention, host_slots
from cormorant.layers.gguf_linear import (GROUP, KERNEL_DTYPE, Int4CpuMethod, Int4Layout,
                                          Int4PairCpuMethod)

_INT4_MM = torch._weight_int4pack_mm_for_cpu  # the direct binding: ~2 us a call below torch.ops


# The packed layout the compiled step's own int4 kernel reads (ATen's on AVX-512), and the
# rows from which it runs instead of ATen's kernel (csrc/int4_rows.h).
ROWS_LAYOUT = Int4Layout(64, True)
ROWS_MIN = 1


class _Proj(NamedTuple):
    """One int4 projection's kernel operands; pair: the input goes in twice ([x | x]);
    layout: where its codes lie (gguf_linear.Int4Layout; None: not known)."""
    weight: torch.Tensor
    scales_zeros: torch.Tensor
    pair: bool
    layout: Int4Layout | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [1, in] float32 -> [1, out] bf16 (the method's matmul, before its cast back)."""
        rows = x.to(KERNEL_DTYPE)
        if self.pair:
            rows = torch.cat([rows, rows], dim=-1)
        return _INT4_MM(rows, self.weight, GROUP, self.scales_zeros)


class _Layer(NamedTuple):
    in_norm: torch.Tensor
    qkv: _Proj
    o: _Proj
    post_norm: torch.Tensor
    gate_up: _Proj
    down: _Proj


class _Step(NamedTuple):
    """What one step shares across layers: the slot's element offset, where the context's keys
    start (the first block's offset when the blocks are consecutive ids, else 0 in a gathered
    copy of `blocks`), the context length and the rotary's cos and sin."""
    slot_offset: int
    keys_offset: int
    blocks: torch.Tensor | None  # int64 block ids to gather, None: read the cache in place
    seq_len: int
    cos: torch.Tensor
    sin: torch.Tensor


def _proj(layer: nn.Module) -> _Proj | None:
    method = getattr(layer, "method", None)
    if (type(method) not in (Int4CpuMethod, Int4PairCpuMethod) or layer.bias is not None
            or layer.tp_size != 1 or not hasattr(layer, "scales_zeros")):  # packed: finalized
        return None
    return _Proj(layer.weight, layer.scales_zeros, type(method) is Int4PairCpuMethod,
                 getattr(layer, "int4_layout", None))


class LeanDecode:
    """The lean step of one LlamaModel (see the module docstring); `build` says whether the
    model qualifies, `run` whether a step does."""

    def __init__(self, layers: list[_Layer], eps: float, final_norm: torch.Tensor,
                 attn: nn.Module) -> None:
        self.layers = layers
        self.eps = eps
        self.final_norm = final_norm
        self.rotary = attn.rotary_emb
        self.num_heads, self.num_kv_heads = attn.num_heads, attn.num_kv_heads
        self.head_dim, self.scale = attn.head_dim, attn.scale
        self.shape = (final_norm.shape[0],)
        # The compiled step's operands, flat per layer as its schema takes them.
        self.native = load_cpu_decode()
        self.norms = [t for lay in layers for t in (lay.in_norm, lay.post_norm)]
        projs = [p for lay in layers for p in (lay.qkv, lay.o, lay.gate_up, lay.down)]
        self.weights = [p.weight for p in projs]
        self.scales_zeros = [p.scales_zeros for p in projs]
        self.pairs = [int(p.pair) for p in projs]
        self.rows_min = ROWS_MIN if all(p.layout == ROWS_LAYOUT for p in projs) else 0
        self.steps = {"native": 0, "python": 0}  # steps taken by each path

    @classmethod
    def build(cls, model: nn.Module) -> LeanDecode | None:
        """The lean step of `model` (a LlamaModel), or None where it would not be its path."""
        from cormorant.models.llama import LlamaDecoderLayer

        layers, eps = [], {model.norm.eps}
        for layer in model.layers:
            if type(layer) is not LlamaDecoderLayer:
                return None
            attn, mlp = layer.self_attn, layer.mlp
            if (attn.q_norm is not None or type(attn.attn_backend) is not TorchAttention
                    or attn.rotary_emb is not model.rotary_emb):
                return None
            projs = [_proj(p) for p in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj,
                                        mlp.down_proj)]
            if any(p is None for p in projs):
                return None
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            eps.update(n.eps for n in norms)
            layers.append(_Layer(norms[0].weight, projs[0], projs[1], norms[1].weight,
                                 projs[2], projs[3]))
        weights = [model.norm.weight] + [t for lay in layers for t in (lay.in_norm, lay.post_norm)]
        if (not layers or len(eps) != 1
                or any(w.dtype != torch.float32 or w.device.type != "cpu" for w in weights)):
            return None
        return cls(layers, eps.pop(), model.norm.weight, model.layers[0].self_attn)

    def _step(self, positions: torch.Tensor, kv_caches: list[torch.Tensor],
              meta: AttentionMetadata) -> _Step | None:
        """This step's shared offsets, or None if it is not one row of one sequence in a
        float32 cache."""
        if meta.num_seqs != 1 or meta.max_query_len != 1 or positions.shape[0] != 1:
            return None
        cache = kv_caches[0]
        if cache.dtype != torch.float32 or cache.device.type != "cpu":
            return None
        host = host_slots(meta)
        if host is None or not host.all_valid or len(host.slots) != 1:
            return None
        seq_len, block_size = meta.seq_lens_cpu[0], cache.shape[2]
        num_blocks = -(-seq_len // block_size)
        table = meta.block_tables[0, :num_blocks]
        ids = table.tolist()
        blocks = None if ids == list(range(ids[0], ids[0] + num_blocks)) else table.long()
        rope = self.rotary  # cos and sin as TorchAttention memoises them (the same key)
        cos, sin = meta.memo(("rope", id(rope), torch.float32),
                             lambda: rope.cos_sin(positions, torch.float32))
        token = self.num_kv_heads * self.head_dim  # a slot's elements, keys or values
        first = ids[0] * block_size * token if blocks is None else 0
        return _Step(host.slots[0] * token, first, blocks, seq_len, cos, sin)

    def run(self, hidden: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
            meta: AttentionMetadata) -> torch.Tensor | None:
        """The model's final hidden state [M, hidden] for the embedded tokens `hidden`, or
        None (nothing done) when this step is not one the lean path takes."""
        if self.native is not None:
            out = self._run_native(hidden, positions, kv_caches, meta)
            if out is not None:
                self.steps["native"] += 1
                return out
        step = self._step(positions, kv_caches, meta)
        if step is None or any(not c.is_contiguous() for c in kv_caches):
            return None
        self.steps["python"] += 1
        eps, shape = self.eps, self.shape
        total = hidden
        normed = torch.rms_norm(hidden, shape, self.layers[0].in_norm, eps)
        for i, (layer, cache) in enumerate(zip(self.layers, kv_caches, strict=True)):
            if i:  # hidden: the last down_proj's bf16 output, promoted by the add
                total = torch.add(hidden, total)
                normed = torch.rms_norm(total, shape, layer.in_norm, eps)
            attn = self._attention(layer.qkv(normed).float(), cache, step)
            total = torch.add(layer.o(attn), total)
            normed = torch.rms_norm(total, shape, layer.post_norm, eps)
            gate_up = layer.gate_up(normed).float()
            gate, up = gate_up.chunk(2, dim=-1)
            hidden = layer.down(F.silu(gate) * up)
        return torch.rms_norm(torch.add(hidden, total), shape, self.final_norm, eps)

    def _attention(self, qkv: torch.Tensor, cache: torch.Tensor, step: _Step) -> torch.Tensor:
        """Rotary, KV write and SDPA of one row, as TorchAttention does them: qkv [1, (H + 2
        Hkv) D] float32 -> [1, H D]."""
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        rotated, half = heads + kv_heads, dim // 2
        # layers.rotary._rotate of q's and k's heads at once, in place in qkv (a fresh tensor
        # of this layer's): [x1, x2] * cos + [x2, x1] * sin, the same products and sum.
        halves = qkv.as_strided((1, rotated, 2, half), (qkv.shape[1], dim, half, 1))
        flipped = halves.flip(2)
        flipped.mul_(step.sin)
        halves.mul_(step.cos)
        halves += flipped
        # k and v lie side by side in qkv now: both written into the slot in one copy.
        token, values = kv_heads * dim, cache.stride(0)
        base = cache.storage_offset()
        cache.as_strided((2, kv_heads, dim), (values, dim, 1), base + step.slot_offset).copy_(
            qkv.as_strided((2, kv_heads, dim), (token, dim, 1), heads * dim))
        if step.blocks is not None:  # scattered blocks: gathered, keys and values at once
            cache = cache.index_select(1, step.blocks)  # [2, blocks, block_size, Hkv, D]
            base, values = cache.storage_offset(), cache.stride(0)
        kv_shape = (1, kv_heads, step.seq_len, dim)
        kv_strides = (step.seq_len * token, dim, token, 1)
        keys = cache.as_strided(kv_shape, kv_strides, base + step.keys_offset)
        vals = cache.as_strided(kv_shape, kv_strides, base + values + step.keys_offset)
        q = qkv.as_strided((1, heads, 1, dim), (qkv.shape[1], dim, dim, 1))
        attn = F.scaled_dot_product_attention(q, keys, vals, scale=self.scale,
                                              enable_gqa=heads != kv_heads)
        return attn.view(1, heads * dim)

    def _run_native(self, hidden: torch.Tensor, positions: torch.Tensor,
                    kv_caches: list[torch.Tensor], meta: AttentionMetadata) -> torch.Tensor | None:
        """The compiled step, where this step is M rows of pure decode on float32 caches of
        one shape (every slot valid); else None."""
        rows = hidden.shape[0]
        if (meta.max_query_len != 1 or meta.num_seqs != rows or positions.shape != (rows,)
                or hidden.dtype != torch.float32 or hidden.device.type != "cpu"):
            return None
        shape = kv_caches[0].shape
        if any(c.dtype != torch.float32 or c.device.type != "cpu" or not c.is_contiguous()
               or c.shape != shape for c in kv_caches):
            return None
        host = host_slots(meta)
        if host is None or not host.all_valid or len(host.slots) != rows:
            return None
        cos_sin = self.rotary.cos_sin_cache
        return self.native(
            hidden.contiguous(), positions.long().contiguous(), cos_sin.float().contiguous(),
            kv_caches, meta.slot_mapping.long().contiguous(),
            meta.block_tables.int().contiguous(), meta.seq_lens.int().contiguous(), self.norms,
            self.weights, self.scales_zeros, self.pairs, self.final_norm, self.eps,
            self.num_heads, self.num_kv_heads, self.head_dim, self.scale, self.rows_min)
