"""Paged attention in one launch for a packed batch of prefill chunks and decodes.

Imports torch, triton, kernels.e4m3 and kernels.pdl. Layout and conventions are those of
cormorant.layers.attention: the cache is [2, num_blocks, block_size, num_kv_heads, head_dim]
(pass its [0] and [1]); sequence i owns query rows query_start_loc[i]:query_start_loc[i+1],
which are the last query_len tokens of its seq_lens[i]-token context (causal against the tail
of the context).

Design (the "unified" layout of vLLM's Triton backend, own code):
- One program per (query block, KV head). A tile's BLOCK_M rows are BLOCK_Q query tokens times
  the num_heads // num_kv_heads query heads that share a KV head, so each K/V tile is read once
  for the whole GQA group; decode is bandwidth bound, and this is where its speed comes from.
- Query blocks never straddle sequences: sequence i starts at block query_start_loc[i] // BLOCK_Q
  + i, so the grid (num_tokens // BLOCK_Q + num_seqs) depends only on tensor shapes, and each
  program finds its sequence by binary search on the device: no host sync, CUDA-graph safe.
- Online softmax (base 2) over KV tiles of TILE keys gathered through the block table, so TILE
  need not equal the cache block size.
- Split-KV (flash-decoding): with NUM_SEGMENTS > 1 a third grid axis splits each program's KV
  tiles into segments that write unnormalised partials; `_reduce_segments_kernel` merges them.
  Used for decode batches too small to fill the GPU.
- An fp8 cache (float8_e4m3fn, kernels.kv_cache) is read as fp8 and cast to the query's dtype
  for the dots (exact: every e4m3 value is a bf16/fp16/fp32 value). With bf16 queries on
  Hopper (kernels.e4m3.available) the codes are read as bytes and made bf16 by integer ops,
  bit for bit the same: Triton's casts run at the conversion rate. CORMORANT_KV_FP8_CVT
  picks another way (kv_conversion; fp16 dots among them: the queries cast to fp16 once per
  program, the codes need no bf16 step). The
  dequantization's multiply by the layer's scales is folded in, k_scale into the softmax scale
  and v_scale into the output, both in fp32 and read from device tensors (CUDA-graph safe).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os

import torch
import triton
import triton.language as tl

from cormorant.kernels import e4m3, pdl
from cormorant.kernels.e4m3 import (e4m3_to_bf16, e4m3_to_f16, e4m3_to_f16_scaled,
                                    e4m3x2_to_f16x2, opaque_f16)

_LOG2E = 1.4426950408889634


@triton.jit
def _find_seq(query_start_loc_ptr, q_block_idx, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest i with query_start_loc[i] // BLOCK_Q + i <= q_block_idx (binary search)."""
    # Tensors from the start: an int argument equal to 1 arrives as a constexpr, and loop-carried
    # values must keep one type.
    lo = q_block_idx * 0
    hi = lo + num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_block <= q_block_idx:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


# How the dots read an fp8 cache (KV_CVT): the codes cast to the query's dtype; made bf16 by
# integer ops (kernels.e4m3); or fp16 dots (the queries cast to fp16 once per program), the
# codes made fp16 by the hardware conversion (keys) and _values_f16 (values), or by integer
# ops (the value times 2^-8, folded back into the scales).
CVT_CAST, CVT_BITS, CVT_F16_CAST, CVT_F16_BITS = range(4)
CONVERSIONS = {"cast": CVT_CAST, "bits": CVT_BITS, "f16_cast": CVT_F16_CAST,
               "f16_bits": CVT_F16_BITS}
# The kernels' view of them (Triton reads only constexpr globals).
_BITS, _F16_CAST, _F16_BITS = (tl.constexpr(CVT_BITS), tl.constexpr(CVT_F16_CAST),
                               tl.constexpr(CVT_F16_BITS))


@triton.jit
def _to_dot(x, KIND: tl.constexpr, KV_CVT: tl.constexpr, PTX: tl.constexpr):
    """A K or V tile as the dots read it (KV_CVT above; KIND: the dots' dtype)."""
    if KV_CVT == _BITS:
        return e4m3_to_bf16(x)
    if KV_CVT == _F16_BITS:
        return e4m3_to_f16_scaled(x)
    if KV_CVT == _F16_CAST and PTX:  # impure on purpose: 16-bit dot layouts (kernels.e4m3)
        return e4m3_to_f16(x)
    return x.to(KIND)


@triton.jit
def _values_f16(v_cache_ptr, slot_offs, key_ok, TILE: tl.constexpr, HEAD_DIM: tl.constexpr,
                HEAD_DIM_P: tl.constexpr, PTX: tl.constexpr):
    """An fp8 cache's V tile [TILE, HEAD_DIM_P] as fp16, read as pairs of codes.

    P.V sums over keys, but a cache row is contiguous over dims: the tensor cores want each
    register to hold two keys of one dim, which `ldmatrix.trans` gives 16-bit data and has
    no 8-bit form for, so an fp8 tile left to Triton is read from shared memory byte by
    byte. Here each uint16 pair of codes becomes two fp16 in the row (one conversion on the
    card, kernels.e4m3.e4m3x2_to_f16x2; Triton's casts in the interpreter), and the join
    keeps that conversion before shared memory: the fp16 tile then takes `ldmatrix.trans`.
    The join would make Triton lay the dot out for 8-bit data (four elements of K per thread:
    P reloaded with 64-bit loads and register moves), hence the opaque no-op after it.
    On sm_90 the loop is 472 instructions against 743 with the bytes (HEAD_DIM even)."""
    pairs = tl.arange(0, HEAD_DIM_P // 2)
    ptr = (v_cache_ptr + slot_offs[:, None]).to(tl.pointer_type(tl.uint16)) + pairs[None, :]
    codes = tl.load(ptr, mask=key_ok[:, None] & (pairs < HEAD_DIM // 2)[None, :], other=0)
    if PTX:
        lo, hi = e4m3x2_to_f16x2(codes)
    else:
        lo = codes.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float16)
        hi = (codes >> 8).to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float16)
    V = tl.reshape(tl.join(lo, hi), [TILE, HEAD_DIM_P])
    if PTX:
        V = opaque_f16(V)
    return V


@triton.jit
def _attend_tiles(acc, m_i, l_i, Q, q_pos, k_cache_ptr, v_cache_ptr, bt_row_ptr, kv_head,
                  tile_lo, tile_hi, kv_end, scale_log2, stride_cb, stride_cs, stride_ch,
                  BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                  TILE: tl.constexpr, DOT_PRECISION: tl.constexpr, KV_CVT: tl.constexpr,
                  PTX: tl.constexpr):
    """Online-softmax accumulation of KV tiles [tile_lo, tile_hi) into (acc, m_i, l_i).
    Q is in the dots' dtype; KV_CVT says how the cache's tiles become it (see CVT_*); PTX:
    inline PTX may run (a card, not the interpreter)."""
    dims = tl.arange(0, HEAD_DIM_P)
    dim_ok = dims < HEAD_DIM
    for tile in range(tile_lo, tile_hi):
        keys = tile * TILE + tl.arange(0, TILE)  # absolute key positions
        key_ok = keys < kv_end
        block_ids = tl.load(bt_row_ptr + keys // BLOCK_SIZE, mask=key_ok, other=0)
        # int64: caches over 2**31 elements are routine on 80 GB cards.
        slot_offs = (block_ids.to(tl.int64) * stride_cb + (keys % BLOCK_SIZE) * stride_cs
                     + kv_head * stride_ch)  # [TILE]
        K = tl.load(k_cache_ptr + slot_offs[None, :] + dims[:, None],
                    mask=key_ok[None, :] & dim_ok[:, None], other=0.0)  # [HEAD_DIM_P, TILE]
        K = _to_dot(K, Q.dtype, KV_CVT, PTX)
        if KV_CVT == _F16_CAST:
            V = _values_f16(v_cache_ptr, slot_offs, key_ok, TILE, HEAD_DIM, HEAD_DIM_P, PTX)
        else:
            V = tl.load(v_cache_ptr + slot_offs[:, None] + dims[None, :],
                        mask=key_ok[:, None] & dim_ok[None, :], other=0.0)  # [TILE, HEAD_DIM_P]
            V = _to_dot(V, Q.dtype, KV_CVT, PTX)
        S = tl.dot(Q, K, input_precision=DOT_PRECISION) * scale_log2
        visible = key_ok[None, :] & (keys[None, :] <= q_pos[:, None])
        S = tl.where(visible, S, float("-inf"))  # [BLOCK_M, TILE]
        m_new = tl.maximum(m_i, tl.max(S, axis=1))
        P = tl.exp2(S - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(P, axis=1)
        acc = acc * alpha[:, None] + tl.dot(P.to(Q.dtype), V, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


# Ints that change from step to step are not specialised: Triton would otherwise compile a
# new variant the first time num_seqs or the block-table width is 1, a multiple of 16 or
# neither, stalling that step by a second or more (measured: the first B3 run on an H100
# spent 2.3 s of 2.9 s compiling, which read as an async-scheduling regression).
@triton.jit(do_not_specialize=["num_seqs", "stride_bt"])
def _paged_attention_kernel(
        out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
        q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
        k_scale_ptr, v_scale_ptr, scale_log2, num_seqs, num_heads,
        stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
        QUERIES_PER_KV: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
        HEAD_DIM_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
        TILE: tl.constexpr, NUM_SEGMENTS: tl.constexpr, DOT_PRECISION: tl.constexpr,
        KV_FP8: tl.constexpr, KV_CVT: tl.constexpr, PTX: tl.constexpr,
        PDL: tl.constexpr):
    pdl.wait(PDL)  # before any load: the previous kernel's writes are visible
    pdl.launch_dependents(PDL)
    q_block_idx = tl.program_id(0)
    kv_head = tl.program_id(1)
    segment = tl.program_id(2)
    seq = _find_seq(query_start_loc_ptr, q_block_idx, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_block = q_block_idx - (q_start // BLOCK_Q + seq)  # block index within the sequence
    if q_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len  # keys before this step's first query

    rows = tl.arange(0, BLOCK_M)
    q_tok = q_block * BLOCK_Q + rows // QUERIES_PER_KV  # query index within the sequence
    head = kv_head * QUERIES_PER_KV + rows % QUERIES_PER_KV
    row_ok = (q_tok < q_len) & (rows < BLOCK_Q * QUERIES_PER_KV)
    dims = tl.arange(0, HEAD_DIM_P)
    dim_ok = dims < HEAD_DIM
    tok = (q_start + q_tok).to(tl.int64)
    Q = tl.load(q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_M, HEAD_DIM_P]
    q_pos = context_len + q_tok  # absolute position: the last key each row may see

    # Keys past the last query of this block are invisible to all its rows: stop there.
    kv_end = tl.minimum(seq_len, context_len + (q_block + 1) * BLOCK_Q)
    num_tiles = tl.cdiv(kv_end, TILE)
    tiles_per_segment = tl.cdiv(num_tiles, NUM_SEGMENTS)
    tile_lo = segment * tiles_per_segment
    tile_hi = tl.minimum(tile_lo + tiles_per_segment, num_tiles)

    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], dtype=tl.float32)
    # Finite "minus infinity" for the running max: a row that sees no key in a tile (or in a
    # whole split segment) keeps exp2(m_old - m_new) = 1 and l = 0 instead of turning NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    bt_row_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt
    if KV_FP8:  # Q.K = Q.(K8 * k_scale): k_scale joins the softmax scale
        scale_log2 = scale_log2 * tl.load(k_scale_ptr)
        if KV_CVT == _F16_BITS:  # the keys come as their values times 2^-8
            scale_log2 = scale_log2 * 256.0
    if KV_CVT >= _F16_CAST:  # fp16 dots: clamped, as fp16 overflows past 65504
        Q = tl.minimum(tl.maximum(Q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)
    acc, m_i, l_i = _attend_tiles(acc, m_i, l_i, Q, q_pos, k_cache_ptr, v_cache_ptr, bt_row_ptr,
                                  kv_head, tile_lo, tile_hi, kv_end, scale_log2,
                                  stride_cb, stride_cs, stride_ch,
                                  BLOCK_SIZE, HEAD_DIM, HEAD_DIM_P, TILE, DOT_PRECISION,
                                  KV_CVT, PTX)
    if KV_FP8:  # P.V = (P.V8) * v_scale
        v_scale = tl.load(v_scale_ptr)
        if KV_CVT == _F16_BITS:  # the values come as their values times 2^-8
            v_scale = v_scale * 256.0
        acc = acc * v_scale

    store_ok = row_ok[:, None] & dim_ok[None, :]
    if NUM_SEGMENTS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=store_ok)
    else:
        # Partials: [num_tokens, num_heads, NUM_SEGMENTS] (+ [HEAD_DIM_P] for acc), fp32.
        part = (tok * num_heads + head) * NUM_SEGMENTS + segment
        tl.store(part_max_ptr + part, m_i, mask=row_ok)
        tl.store(part_sum_ptr + part, l_i, mask=row_ok)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM_P + dims[None, :], acc, mask=store_ok)


@triton.jit(do_not_specialize=["num_seqs"])
def _reduce_segments_kernel(out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
                            query_start_loc_ptr, num_seqs, num_heads, stride_ot, stride_oh,
                            HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr,
                            NUM_SEGMENTS: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)  # before any load: the previous kernel's writes are visible
    pdl.launch_dependents(PDL)
    tok = tl.program_id(0)
    head = tl.program_id(1)
    # Padding rows after the last sequence were never written by the main kernel.
    if tok >= tl.load(query_start_loc_ptr + num_seqs):
        return
    segs = tl.arange(0, NUM_SEGMENTS)
    dims = tl.arange(0, HEAD_DIM_P)
    part = (tok.to(tl.int64) * num_heads + head) * NUM_SEGMENTS + segs  # [NUM_SEGMENTS]
    m = tl.load(part_max_ptr + part)
    weight = tl.exp2(m - tl.max(m, axis=0))  # empty segments: m = -1e30 -> weight 0
    denom = tl.sum(weight * tl.load(part_sum_ptr + part), axis=0)
    # Padding dims (head_dim not a power of 2) were never written: mask them.
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM_P + dims[None, :],
                  mask=(dims < HEAD_DIM)[None, :], other=0.0)
    out = tl.sum(acc * weight[:, None], axis=0) / tl.where(denom == 0.0, 1.0, denom)
    tl.store(out_ptr + tok.to(tl.int64) * stride_ot + head * stride_oh + dims,
             out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


@dataclasses.dataclass(frozen=True)
class PagedAttentionConfig:
    """Launch shape. block_m: query rows per tile (tokens x GQA group); tile_size: keys per
    inner step; num_segments: split-KV factor (1 = no split, no reduction pass);
    max_registers: a per-thread register cap for ptxas (0: its own choice)."""

    block_m: int = 16
    tile_size: int = 32
    num_segments: int = 1
    num_warps: int = 4
    num_stages: int = 2
    max_registers: int = 0


def choose_config(num_heads: int, num_kv_heads: int, max_query_len: int, num_seqs: int,
                  num_sms: int = 132, dtype: torch.dtype = torch.bfloat16,
                  kv_cvt: int = CVT_CAST) -> PagedAttentionConfig:
    """Heuristic launch shape from host-known facts only, so a captured CUDA graph (fixed
    num_seqs, max_query_len 1) always gets the same choice. Not tuned yet on an H100:
    benchmarks/gpu_kernel_check.py --sweep compares the alternatives. kv_cvt: how the dots
    read an fp8 cache (CVT_*; the f16_cast decode launch takes a register cap)."""
    group = num_heads // num_kv_heads
    min_m = max(16, triton.next_power_of_2(group))
    if max_query_len <= 1:
        # Split the KV only when (seq, kv head) programs cannot fill the SMs twice over.
        programs = num_seqs * num_kv_heads
        segments = 1
        while programs * segments < 2 * num_sms and segments < 16:
            segments *= 2
        config = PagedAttentionConfig(block_m=min_m, tile_size=64 if dtype != torch.float32
                                      else 32, num_segments=segments, num_warps=4,
                                      num_stages=2,
                                      # sm_90, Triton 3.6: 146 registers (3 blocks an SM);
                                      # capped, 4 blocks, no spill, 472 loop instructions
                                      max_registers=128 if kv_cvt == CVT_F16_CAST else 0)
        return _decode_override(config)
    if dtype == torch.float32:
        # IEEE fp32 dots run on FMA units with blocked layouts: big tiles spill registers.
        return PagedAttentionConfig(block_m=max(32, min_m), tile_size=32, num_warps=8)
    if max_query_len >= 256:
        return PagedAttentionConfig(block_m=max(128, min_m), tile_size=64, num_warps=8,
                                    num_stages=2)
    return PagedAttentionConfig(block_m=max(64, min_m), tile_size=64, num_warps=4,
                                num_stages=2)


_OVERRIDE_KEYS = {"tile": "tile_size", "warps": "num_warps", "stages": "num_stages",
                  "regs": "max_registers"}


def _decode_override(config: PagedAttentionConfig) -> PagedAttentionConfig:
    """CORMORANT_ATTN_DECODE="tile=128,stages=3,regs=96" (any of tile, warps, stages, regs)
    replaces those fields of the decode launch shape: an A/B switch for benchmarks."""
    spec = os.environ.get("CORMORANT_ATTN_DECODE", "")
    if not spec:
        return config
    fields = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in _OVERRIDE_KEYS or not value.strip().isdigit():
            raise ValueError(f"CORMORANT_ATTN_DECODE={spec!r}: comma-separated key=int, keys "
                             f"{', '.join(_OVERRIDE_KEYS)}")
        fields[_OVERRIDE_KEYS[key.strip()]] = int(value)
    return dataclasses.replace(config, **fields)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                    block_tables: torch.Tensor, scale: float, max_query_len: int,
                    out: torch.Tensor | None = None,
                    config: PagedAttentionConfig | None = None,
                    k_scale: torch.Tensor | None = None,
                    v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of packed queries q [num_tokens, num_heads, head_dim] against the paged
    cache (k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]); an fp8 cache
    needs k_scale and v_scale (fp32 one-element device tensors).

    query_start_loc [num_seqs + 1], seq_lens [num_seqs] and block_tables [num_seqs, max_blocks]
    live on the device; max_query_len (host int) only picks the launch shape. Rows of out past
    query_start_loc[-1] are left untouched. No host synchronisation.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_seqs = seq_lens.shape[0]
    assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
    assert q.stride(2) == 1 and k_cache.stride(3) == 1 and k_cache.stride() == v_cache.stride()
    if out is None:
        out = torch.empty_like(q)
    assert out.shape == q.shape and out.stride(2) == 1
    if num_tokens == 0 or num_seqs == 0:
        return out
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    assert not fp8 or (k_scale is not None and v_scale is not None), "fp8 cache needs scales"
    cvt = kv_conversion(q.dtype, q.device) if fp8 else CVT_CAST
    if cvt == CVT_F16_CAST and head_dim % 2:
        cvt = CVT_CAST  # _values_f16 reads pairs of codes
    if config is None:
        config = choose_config(num_heads, num_kv_heads, max_query_len, num_seqs, _num_sms(q),
                               q.dtype, cvt)
    group = num_heads // num_kv_heads
    if cvt in (CVT_BITS, CVT_F16_BITS):  # the codes as bytes, for integer ops
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    assert config.block_m >= group and config.tile_size >= 16  # tl.dot needs 16+ per dim
    for n in (config.block_m, config.tile_size, config.num_segments):
        assert n & (n - 1) == 0, f"launch sizes must be powers of 2: {config}"
    block_q = config.block_m // group
    head_dim_p = triton.next_power_of_2(head_dim)
    segments = config.num_segments
    if segments > 1:
        part_acc = torch.empty(num_tokens, num_heads, segments, head_dim_p,
                               dtype=torch.float32, device=q.device)
        part_max = torch.empty(num_tokens, num_heads, segments, dtype=torch.float32,
                               device=q.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_acc = part_max = part_sum = out  # unused by the kernel when NUM_SEGMENTS == 1
    grid = (num_tokens // block_q + num_seqs, num_kv_heads, segments)
    launch = pdl.launch_options(q.device)
    _paged_attention_kernel[grid](
        out, part_acc, part_max, part_sum, q, k_cache, v_cache, block_tables, seq_lens,
        query_start_loc, k_scale if fp8 else q, v_scale if fp8 else q, scale * _LOG2E,
        num_seqs, num_heads,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        QUERIES_PER_KV=group, BLOCK_SIZE=block_size, HEAD_DIM=head_dim, HEAD_DIM_P=head_dim_p,
        BLOCK_M=config.block_m, BLOCK_Q=block_q, TILE=config.tile_size,
        NUM_SEGMENTS=segments, DOT_PRECISION=_dot_precision(q.dtype), KV_FP8=fp8,
        KV_CVT=cvt, PTX=inline_ptx(q),
        num_warps=config.num_warps, num_stages=config.num_stages,
        **({"maxnreg": config.max_registers} if config.max_registers else {}), **launch)
    if segments > 1:
        _reduce_segments_kernel[(num_tokens, num_heads)](
            out, part_acc, part_max, part_sum, query_start_loc, num_seqs, num_heads,
            out.stride(0), out.stride(1), HEAD_DIM=head_dim, HEAD_DIM_P=head_dim_p,
            NUM_SEGMENTS=segments, num_warps=4, **launch)
    return out


def inline_ptx(t: torch.Tensor) -> bool:
    """Whether kernels reading `t` may use inline PTX: on a card, not under the interpreter."""
    return t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1"


def kv_conversion(q_dtype: torch.dtype, device: torch.device) -> int:
    """How the dots read an fp8 cache (CVT_*). Only bf16 queries have a choice: fp16 ones
    cast the codes to fp16 and fp32 ones to fp32. CORMORANT_KV_FP8_CVT names it (cast, bits,
    f16_cast, f16_bits); the integer-op ones need kernels.e4m3.available (CUDA
    sm_90+, not switched off), else the cast. Default: bits where available."""
    name = os.environ.get("CORMORANT_KV_FP8_CVT", "")
    if name and name not in CONVERSIONS:
        raise ValueError(f"CORMORANT_KV_FP8_CVT={name!r}: one of {', '.join(CONVERSIONS)}")
    if q_dtype != torch.bfloat16:
        return CVT_CAST
    ints = e4m3.available(device)  # CORMORANT_E4M3_CVT=hw turns the integer ops off
    if not name:
        return CVT_BITS if ints else CVT_CAST
    if name in ("bits", "f16_bits") and not ints:
        return CVT_CAST
    return CONVERSIONS[name]


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 models should get fp32 answers; TF32 would cost ~1e-3 relative error.
    return "ieee" if dtype == torch.float32 else "tf32"


def _num_sms(t: torch.Tensor) -> int:
    if t.is_cuda:
        return _cuda_sm_count(t.device.index if t.device.index is not None
                              else torch.cuda.current_device())
    return 132  # interpreter runs: pretend an H100 so the same configs get exercised


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    # Called once per layer per step: keep it off the hot path.
    return torch.cuda.get_device_properties(index).multi_processor_count


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                        block_tables: torch.Tensor, scale: float,
                        out: torch.Tensor | None = None, k_scale: torch.Tensor | None = None,
                        v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch reference of paged_attention: explicit fp32 softmax per sequence
    (independent of SDPA, which the TorchAttention backend uses). Synchronises freely. An
    fp8 cache is dequantized first: fp32 * scale."""
    num_heads, group = q.shape[1], q.shape[1] // k_cache.shape[2]
    block_size = k_cache.shape[1]
    if out is None:
        out = torch.empty_like(q)
    starts, lens = query_start_loc.tolist(), seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        lo, hi = starts[i], starts[i + 1]
        if hi == lo:
            continue
        blocks = block_tables[i, :math.ceil(seq_len / block_size)].long()
        k = k_cache[blocks].flatten(0, 1)[:seq_len].float().repeat_interleave(group, dim=1)
        v = v_cache[blocks].flatten(0, 1)[:seq_len].float().repeat_interleave(group, dim=1)
        if k_cache.dtype == torch.float8_e4m3fn:
            k, v = k * k_scale, v * v_scale
        scores = torch.einsum("qhd,khd->hqk", q[lo:hi].float(), k) * scale  # [H, Q, S]
        q_pos = torch.arange(seq_len - (hi - lo), seq_len, device=q.device)
        visible = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
        out[lo:hi] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(out.dtype)
    assert num_heads == group * k_cache.shape[2]
    return out
