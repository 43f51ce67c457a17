"""GPU check of every Triton kernel in cormorant.kernels: correctness against its PyTorch
reference at real model sizes, then speed against the physical floor.

Run from the repository root on a CUDA machine:  python benchmarks/gpu_kernel_check.py
(--quick: one model; --sweep: also try attention launch shapes; --only SUBSTR: filter rows).

For each model (Qwen3-0.6B 16/8/128, Llama-3.1-8B 32/8/128, SmolLM2-135M 9/3/64) and dtype
(bf16, fp32): fresh random inputs, the output poisoned with NaN before the kernel runs and then
checked fully written (in-place ops: checked NaN-free, neighbours untouched), relative error
||out - ref|| / ||ref|| in fp64 ("wr" column: fully written); times are medians of
triton.testing.do_bench (L2 flushed between runs). Decode attention reports GB/s of KV read
against a measured device-to-device copy; the reference path (TorchAttention: SDPA per
sequence) is timed beside it. A CUDA-graph capture/replay of a decode step with changed
lengths checks that the backend needs no host sync. Each variant is caught and reported on its
own; the table at the end is the summary. Imports torch, triton and cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from cormorant.kernels import activation, gemv, kv_cache, paged_attention as pa, qk_prep, rmsnorm, rotary  # noqa: E402,E501
from cormorant.layers.attention import AttentionMetadata, TorchAttention  # noqa: E402
from cormorant.layers.triton_attention import TritonAttention  # noqa: E402

NAN = float("nan")
DEVICE = "cuda"


@dataclass(frozen=True)
class Model:
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    inter: int


MODELS = {"qwen3-0.6b": Model(16, 8, 128, 1024, 3072),
          "llama3.1-8b": Model(32, 8, 128, 4096, 14336),
          "smollm2-135m": Model(9, 3, 64, 576, 1536)}
TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


@dataclass
class Row:
    name: str
    err: float = NAN
    written: bool = False
    ms: float = NAN
    metric: str = ""
    ref_ms: float = NAN
    status: str = "ok"


def bench(fn) -> float:
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())


def copy_bandwidth() -> float:
    """Device-to-device copy GB/s (read + write) of a 1 GiB buffer: the practical floor."""
    src = torch.empty(1 << 29, dtype=torch.bfloat16, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


# ---------------------------------------------------------------- attention batches
@dataclass
class Batch:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cache: torch.Tensor
    meta: AttentionMetadata


def make_batch(m: Model, query_lens, seq_lens, dtype, block_size=16, table_width=0) -> Batch:
    """Random packed batch; every sequence gets shuffled cache blocks from the whole pool."""
    per_seq = [-(-s // block_size) for s in seq_lens]
    width = max(max(per_seq), table_width)
    num_blocks = width * len(seq_lens) + 64
    perm = torch.randperm(num_blocks, device=DEVICE, dtype=torch.int32)
    tables = perm[:width * len(seq_lens)].view(len(seq_lens), width).contiguous()
    slots = []
    for i, (q_len, s_len) in enumerate(zip(query_lens, seq_lens)):
        pos = torch.arange(s_len - q_len, s_len, device=DEVICE)
        slots.append(tables[i, pos // block_size].long() * block_size + pos % block_size)
    starts = torch.tensor([0] + list(query_lens), device=DEVICE).cumsum(0).to(torch.int32)
    tokens = sum(query_lens)
    meta = AttentionMetadata(
        slot_mapping=torch.cat(slots), query_start_loc=starts,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE), block_tables=tables,
        max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        query_lens_cpu=list(query_lens), seq_lens_cpu=list(seq_lens))
    cache = torch.randn(2, num_blocks, block_size, m.kv_heads, m.head_dim, device=DEVICE,
                        dtype=dtype)
    return Batch(torch.randn(tokens, m.heads, m.head_dim, device=DEVICE, dtype=dtype),
                 torch.randn(tokens, m.kv_heads, m.head_dim, device=DEVICE, dtype=dtype),
                 torch.randn(tokens, m.kv_heads, m.head_dim, device=DEVICE, dtype=dtype),
                 cache, meta)


def attention_cases(gen: torch.Generator):
    """name -> (query_lens, seq_lens). Decode rows report GB/s, the others TFLOP/s."""
    def ctx(n, lo, hi):
        return torch.randint(lo, hi, (n,), generator=gen).tolist()
    dec = ctx(32, 1024, 3072)
    return {
        "decode b1 ctx256": ([1], [256]),
        "decode b1 ctx2k": ([1], [2048]),
        "decode b64 ctx~2k": ([1] * 64, ctx(64, 1024, 3072)),
        "decode b4 ctx8k": ([1] * 4, ctx(4, 7000, 9000)),
        "mixed 4x256+pfx1k,32dec": ([256] * 4 + [1] * 32, [1280] * 4 + dec),
        "prefill 2x1024": ([1024, 1024], [1024, 1024]),
        # B3's decode batches: 128/128 (128 rows, context 128-256), 128/2048 (16 rows, ~1k)
        "decode b128 ctx~192": ([1] * 128, ctx(128, 129, 256)),
        "decode b16 ctx~1k": ([1] * 16, ctx(16, 1000, 1300)),
    }


def attention_work(b: Batch, m: Model) -> tuple[float, float]:
    """(unique KV bytes read, causal matmul FLOPs) of one attention call."""
    elem = b.cache.element_size()
    kv_bytes = sum(b.meta.seq_lens_cpu) * m.kv_heads * m.head_dim * 2 * elem
    flops = 0.0
    for q_len, s_len in zip(b.meta.query_lens_cpu, b.meta.seq_lens_cpu):
        visible = q_len * (s_len - q_len) + q_len * (q_len + 1) / 2
        flops += 4 * visible * m.heads * m.head_dim
    return kv_bytes, flops


def run_attention(b: Batch, m: Model, dtype, copy_gbps, config=None, time_ref=True) -> Row:
    scale = m.head_dim ** -0.5
    meta = b.meta
    real = sum(meta.query_lens_cpu)
    kv_cache.store_kv_cache(b.k, b.v, b.cache, meta.slot_mapping)  # the step's own keys

    def kernel(out=None):
        return pa.paged_attention(b.q, b.cache[0], b.cache[1], meta.query_start_loc,
                                  meta.seq_lens, meta.block_tables, scale, meta.max_query_len,
                                  out=out, config=config)
    out = kernel(torch.full_like(b.q, NAN))
    ref = pa.paged_attention_ref(b.q, b.cache[0], b.cache[1], meta.query_start_loc,
                                 meta.seq_lens, meta.block_tables, scale)
    row = Row("", rel_err(out[:real], ref[:real]), not bool(out[:real].isnan().any()))
    row.ms = bench(kernel)
    kv_bytes, flops = attention_work(b, m)
    if meta.max_query_len == 1:
        gbps = kv_bytes / row.ms / 1e6
        row.metric = f"{gbps:7.0f} GB/s {100 * gbps / copy_gbps:3.0f}%cp"
    else:
        row.metric = f"{flops / row.ms / 1e9:7.1f} TFLOP/s"
    if time_ref:
        torch_backend = TorchAttention()
        row.ref_ms = bench(lambda: torch_backend.forward(b.q, b.k, b.v, b.cache, meta, scale))
    row.status = "ok" if row.written and row.err < TOL[dtype] else "FAIL"
    return row


def check_cuda_graph(m: Model, dtype) -> Row:
    """Capture TritonAttention on a 16-seq decode batch, then replay with new q/k/v, longer
    contexts and new block tables copied into the static inputs."""
    b = make_batch(m, [1] * 16, [300] * 16, dtype, table_width=160)
    backend, scale = TritonAttention(), m.head_dim ** -0.5
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            backend.forward(b.q, b.k, b.v, b.cache, b.meta, scale)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(b.q, b.k, b.v, b.cache, b.meta, scale)
    # Same table width and batch size, so the same pool shape: copy into the static inputs.
    new = make_batch(m, [1] * 16, torch.randint(1, 2500, (16,)).tolist(), dtype,
                     table_width=160)
    for name in ("q", "k", "v", "cache"):
        getattr(b, name).copy_(getattr(new, name))
    for name in ("slot_mapping", "query_start_loc", "seq_lens", "block_tables"):
        getattr(b.meta, name).copy_(getattr(new.meta, name))
    return _graph_verdict(graph, out, b, new, dtype, scale)


def _graph_verdict(graph, out, b, new, dtype, scale) -> Row:
    out.fill_(NAN)
    graph.replay()
    torch.cuda.synchronize()
    expected_cache = new.cache.clone()
    kv_cache.store_kv_cache_ref(b.k, b.v, expected_cache, b.meta.slot_mapping)
    ref = pa.paged_attention_ref(b.q, expected_cache[0], expected_cache[1],
                                 b.meta.query_start_loc, b.meta.seq_lens,
                                 b.meta.block_tables, scale)
    row = Row("", rel_err(out, ref), not bool(out.isnan().any()))
    cache_ok = torch.equal(b.cache, expected_cache)
    row.ms = bench(graph.replay)
    row.metric = "cache ok" if cache_ok else "CACHE MISMATCH"
    row.status = "ok" if row.written and cache_ok and row.err < TOL[dtype] else "FAIL"
    return row


# ---------------------------------------------------------------- small kernels
def _finish(row: Row, dtype, kernel, ref, nbytes: float, copy_gbps: float) -> Row:
    row.ms, row.ref_ms = bench(kernel), bench(ref)
    gbps = nbytes / row.ms / 1e6
    row.metric = f"{gbps:7.0f} GB/s {100 * gbps / copy_gbps:3.0f}%cp"
    if row.status == "ok":
        row.status = "ok" if row.written and row.err < TOL[dtype] else "FAIL"
    return row


def _qkv_views(m: Model, dtype, tokens: int, qkv: torch.Tensor | None = None):
    """A fused qkv projection output (new, or the given one) and its q, k, v views
    [T, heads, head_dim] (strided)."""
    if qkv is None:
        qkv = torch.randn(tokens, (m.heads + 2 * m.kv_heads) * m.head_dim, device=DEVICE,
                          dtype=dtype)
    q_end, k_end = m.heads * m.head_dim, (m.heads + m.kv_heads) * m.head_dim
    return (qkv, qkv[:, :q_end].view(tokens, m.heads, m.head_dim),
            qkv[:, q_end:k_end].view(tokens, m.kv_heads, m.head_dim),
            qkv[:, k_end:].view(tokens, m.kv_heads, m.head_dim))


def check_store_kv(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    qkv, _, k, v = _qkv_views(m, dtype, tokens)
    num_blocks = tokens // 16 + 8
    slots = torch.randperm(num_blocks * 16, device=DEVICE)[:tokens]
    slots[::97] = -1  # padding tokens
    cache = torch.full((2, num_blocks, 16, m.kv_heads, m.head_dim), NAN, device=DEVICE,
                       dtype=dtype)
    expected = cache.clone()
    kv_cache.store_kv_cache_ref(k, v, expected, slots)
    kv_cache.store_kv_cache(k, v, cache, slots)
    filled = ~expected.isnan()
    row = Row("", rel_err(cache[filled], expected[filled]), torch.equal(cache.isnan(),
                                                                          expected.isnan()))
    nbytes = 4 * tokens * m.kv_heads * m.head_dim * qkv.element_size()
    return _finish(row, dtype, lambda: kv_cache.store_kv_cache(k, v, cache, slots),
                   lambda: kv_cache.store_kv_cache_ref(k, v, expected, slots), nbytes, copy_gbps)


def check_rms_norm(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    x = torch.randn(tokens, m.hidden, device=DEVICE, dtype=dtype)
    w = torch.randn(m.hidden, device=DEVICE, dtype=dtype)
    out = rmsnorm.rms_norm(x, w, 1e-6, out=torch.full_like(x, NAN))
    ref = rmsnorm.rms_norm_ref(x, w, 1e-6)
    row = Row("", rel_err(out, ref), not bool(out.isnan().any()))
    return _finish(row, dtype, lambda: rmsnorm.rms_norm(x, w, 1e-6, out=out),
                   lambda: rmsnorm.rms_norm_ref(x, w, 1e-6), 2 * x.numel() * x.element_size(),
                   copy_gbps)


def check_head_norm(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    """Qwen3 q-norm: per-head RMSNorm of the q slice of a fused qkv tensor (strided rows)."""
    _, q, _, _ = _qkv_views(m, dtype, tokens)
    w = torch.randn(m.head_dim, device=DEVICE, dtype=dtype)
    out = rmsnorm.rms_norm(q, w, 1e-6, out=torch.full_like(q, NAN))
    row = Row("", rel_err(out, rmsnorm.rms_norm_ref(q, w, 1e-6)), not bool(out.isnan().any()))
    return _finish(row, dtype, lambda: rmsnorm.rms_norm(q, w, 1e-6, out=q),
                   lambda: rmsnorm.rms_norm_ref(q, w, 1e-6), 2 * q.numel() * q.element_size(),
                   copy_gbps)


def check_add_rms_norm(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    x = torch.randn(tokens, m.hidden, device=DEVICE, dtype=dtype)
    res = torch.randn(tokens, m.hidden, device=DEVICE, dtype=dtype)
    w = torch.randn(m.hidden, device=DEVICE, dtype=dtype)
    ref_out, ref_res = rmsnorm.fused_add_rms_norm_ref(x, res, w, 1e-6)
    out, new_res = rmsnorm.fused_add_rms_norm(x, res, w, 1e-6)  # in place: no poison possible
    row = Row("", max(rel_err(out, ref_out), rel_err(new_res, ref_res)),
              not bool(out.isnan().any() or new_res.isnan().any()))
    return _finish(row, dtype, lambda: rmsnorm.fused_add_rms_norm(x, res, w, 1e-6),
                   lambda: rmsnorm.fused_add_rms_norm_ref(x, res, w, 1e-6),
                   4 * x.numel() * x.element_size(), copy_gbps)


def check_rotary(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    _, q, k, v = _qkv_views(m, dtype, tokens)
    v_before = v.clone()
    cos_sin = rotary.build_cos_sin_cache(m.head_dim, 32768, 1e6, device=DEVICE)
    positions = torch.randint(0, 32768, (tokens,), device=DEVICE)
    ref_q, ref_k = rotary.rotary_embedding_ref(positions, q, k, cos_sin)
    rotary.rotary_embedding(positions, q, k, cos_sin)
    v_kept = torch.equal(v, v_before)
    row = Row("", max(rel_err(q, ref_q), rel_err(k, ref_k)), v_kept)  # in place
    nbytes = 2 * (q.numel() + k.numel()) * q.element_size()
    return _finish(row, dtype, lambda: rotary.rotary_embedding(positions, q, k, cos_sin),
                   lambda: rotary.rotary_embedding_ref(positions, q, k, cos_sin), nbytes,
                   copy_gbps)


def check_silu(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    x = torch.randn(tokens, 2 * m.inter, device=DEVICE, dtype=dtype)
    out = activation.silu_and_mul(x, out=torch.full((tokens, m.inter), NAN, device=DEVICE,
                                                    dtype=dtype))
    row = Row("", rel_err(out, activation.silu_and_mul_ref(x)), not bool(out.isnan().any()))
    return _finish(row, dtype, lambda: activation.silu_and_mul(x, out=out),
                   lambda: activation.silu_and_mul_ref(x), 1.5 * x.numel() * x.element_size(),
                   copy_gbps)


def check_qk_prep(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    """q/k RMSNorm (Qwen3) + rotary + KV write in one launch, against the unfused reference."""
    qkv, q, k, v = _qkv_views(m, dtype, tokens)
    num_blocks = tokens // 16 + 8
    slots = torch.randperm(num_blocks * 16, device=DEVICE)[:tokens]
    slots[::97] = -1  # CUDA-graph padding rows write nothing
    cos_sin = rotary.build_cos_sin_cache(m.head_dim, 32768, 1e6, device=DEVICE)
    positions = torch.randint(0, 32768, (tokens,), device=DEVICE)
    qw, kw = (torch.rand(m.head_dim, device=DEVICE, dtype=dtype) + 0.5 for _ in range(2))
    cache = torch.full((2, num_blocks, 16, m.kv_heads, m.head_dim), NAN, device=DEVICE,
                       dtype=dtype)
    ref_cache = cache.clone()
    _, ref_q, ref_k, ref_v = _qkv_views(m, dtype, tokens, qkv.clone())
    args = (positions, cos_sin, qw, kw, 1e-6)
    qk_prep.qk_prep_ref(ref_q, ref_k, ref_v, *args, ref_cache, slots)
    qk_prep.qk_prep(q, k, v, *args, cache, slots)
    filled = ~ref_cache.isnan()
    row = Row("", max(rel_err(q, ref_q), rel_err(cache[filled], ref_cache[filled])),
              torch.equal(cache.isnan(), ref_cache.isnan()))
    nbytes = (2 * q.numel() + 4 * k.numel()) * q.element_size()
    return _finish(row, dtype, lambda: qk_prep.qk_prep(q, k, v, *args, cache, slots),
                   lambda: qk_prep.qk_prep_ref(ref_q, ref_k, ref_v, *args, ref_cache, slots),
                   nbytes, copy_gbps)


def _gemv_check(dtype, copy_gbps, weight_shape, make_input, kernel, ref) -> Row:
    w = (torch.randn(*weight_shape, device=DEVICE) * 0.02).to(dtype)
    inputs = make_input()
    out = kernel(w, *inputs)
    out = out[0] if isinstance(out, tuple) else out
    expected = ref(w, *inputs)
    expected = expected[0] if isinstance(expected, tuple) else expected
    row = Row("", rel_err(out, expected), not bool(out.isnan().any()))
    return _finish(row, dtype, lambda: kernel(w, *inputs), lambda: ref(w, *inputs),
                   w.numel() * w.element_size(), copy_gbps)


def check_gemv(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    """Batch-1 decode GEMV, o_proj shape (`tokens` does not apply: one row)."""
    return _gemv_check(dtype, copy_gbps, (m.hidden, m.heads * m.head_dim),
                       lambda: (torch.randn(1, m.heads * m.head_dim, device=DEVICE,
                                            dtype=dtype),),
                       lambda w, x: gemv.skinny_gemm(x, w),
                       lambda w, x: gemv.skinny_gemm_ref(x, w))


def check_gemv_add_norm(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    """Batch-1 residual add + RMSNorm + gate_up GEMV in one launch."""
    def inputs():
        return tuple(torch.randn(1, m.hidden, device=DEVICE, dtype=dtype) for _ in range(2)) \
            + (torch.rand(m.hidden, device=DEVICE, dtype=dtype) + 0.5,)
    return _gemv_check(dtype, copy_gbps, (2 * m.inter, m.hidden), inputs,
                       lambda w, h, r, nw: gemv.add_rms_norm_gemm(h, r, nw, 1e-6, w),
                       lambda w, h, r, nw: gemv.add_rms_norm_gemm_ref(h, r, nw, 1e-6, w))


def check_gemv_silu(m: Model, dtype, tokens: int, copy_gbps: float) -> Row:
    """Batch-1 SiLU-and-multiply + down_proj GEMV in one launch."""
    return _gemv_check(dtype, copy_gbps, (m.hidden, m.inter),
                       lambda: (torch.randn(1, 2 * m.inter, device=DEVICE, dtype=dtype),),
                       lambda w, gu: gemv.silu_mul_gemm(gu, w),
                       lambda w, gu: gemv.silu_mul_gemm_ref(gu, w))


SMALL_CHECKS = {"qk_prep": check_qk_prep, "gemv b1 o_proj": check_gemv,
                "gemv b1 add+norm gate_up": check_gemv_add_norm,
                "gemv b1 silu down": check_gemv_silu, "store_kv": check_store_kv, "rms_norm": check_rms_norm,
                "rms_norm heads": check_head_norm, "add_rms_norm": check_add_rms_norm,
                "rotary": check_rotary, "silu_and_mul": check_silu}


# ---------------------------------------------------------------- driver
class Runner:
    """Runs named variants, each caught on its own; stops cleanly if the CUDA context dies
    (an illegal address poisons every later call) or the time budget runs out."""

    def __init__(self, only: str | None, budget_s: float) -> None:
        self.rows: list[Row] = []
        self.only, self.deadline = only, time.time() + budget_s
        self.dead: str | None = None

    def run(self, name: str, fn) -> Row | None:
        if self.only and self.only not in name:
            return None
        if self.dead or time.time() > self.deadline:
            row = Row(name, status=f"SKIPPED ({self.dead or 'time budget'})")
        else:
            try:
                row = fn()
                row.name = name
            except Exception as exc:  # report and go on: one variant must not stop the rest
                traceback.print_exc(limit=3)
                row = Row(name, status=f"ERROR {type(exc).__name__}: {str(exc)[:60]}")
                self._check_context()
        print(_format(row), flush=True)
        self.rows.append(row)
        return row

    def _check_context(self) -> None:
        try:
            torch.cuda.synchronize()
        except Exception as exc:
            self.dead = f"CUDA context lost: {type(exc).__name__}"


def _format(r: Row) -> str:
    speedup = f"{r.ref_ms / r.ms:6.1f}x" if r.ms == r.ms and r.ref_ms == r.ref_ms else ""
    return (f"{r.name[:46]:46s} {r.err:9.2e} {'yes' if r.written else 'NO ':3s} "
            f"{r.ms:8.3f} {r.metric:21s} {r.ref_ms:9.3f} {speedup:7s} {r.status}")


def sweep_configs(m: Model):
    group = m.heads // m.kv_heads
    bm = max(16, triton.next_power_of_2(group))
    decode = [pa.PagedAttentionConfig(bm, t, 1, w, s) for t in (32, 64, 128) for w in (4, 8)
              for s in (2, 3)]
    split = [pa.PagedAttentionConfig(bm, t, g, 4, 2) for t in (32, 64) for g in (4, 8, 16, 32)]
    prefill = [pa.PagedAttentionConfig(b, t, 1, w, s) for (b, t, w, s) in
               ((64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (128, 64, 8, 2),
                (128, 64, 8, 3), (128, 32, 8, 2), (128, 128, 8, 2), (128, 64, 4, 2))]
    single = [pa.PagedAttentionConfig(bm, t, g, w, 2) for t in (32, 64) for g in (1, 2, 4, 8, 16)
              for w in (2, 4)]
    return {"decode b1 ctx256": single, "decode b1 ctx2k": single, "decode b64 ctx~2k": decode,
            "decode b4 ctx8k": split, "prefill 2x1024": prefill,
            "decode b128 ctx~192": decode + [pa.PagedAttentionConfig(bm, t, 2, 4, 2)
                                             for t in (32, 64)],
            "decode b16 ctx~1k": split + decode}


def check_model(runner: Runner, name: str, m: Model, dtype, copy_gbps: float, tokens: int):
    tag = f"{name} {str(dtype)[6:]}"
    gen = torch.Generator().manual_seed(0)
    for case, (q_lens, s_lens) in attention_cases(gen).items():
        # The reference path is timed in bf16 only: fp32 is a correctness run.
        runner.run(f"attn {case} {tag}", lambda: run_attention(
            make_batch(m, q_lens, s_lens, dtype), m, dtype, copy_gbps,
            time_ref=dtype == torch.bfloat16))
    runner.run(f"attn cuda-graph decode b16 {tag}", lambda: check_cuda_graph(m, dtype))
    for op, check in SMALL_CHECKS.items():
        runner.run(f"{op} T={tokens} {tag}", lambda: check(m, dtype, tokens, copy_gbps))
    torch.cuda.empty_cache()


def run_sweep(runner: Runner, m: Model, copy_gbps: float) -> None:
    cases = attention_cases(torch.Generator().manual_seed(0))
    for case, configs in sweep_configs(m).items():
        batch = make_batch(m, *cases[case], torch.bfloat16)
        for c in configs:
            label = (f"sweep {case} m{c.block_m} t{c.tile_size} s{c.num_segments} "
                     f"w{c.num_warps} st{c.num_stages}")
            runner.run(label, lambda: run_attention(batch, m, torch.bfloat16, copy_gbps,
                                                    config=c, time_ref=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--quick", action="store_true", help="llama3.1-8b bf16 only")
    parser.add_argument("--sweep", action="store_true",
                        help="also time other attention launch shapes (llama bf16, ~1-2 min)")
    parser.add_argument("--only", help="run only rows whose name contains this")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens for the small ops")
    parser.add_argument("--budget", type=float, default=170.0,
                        help="seconds; later variants are skipped, not half-run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script checks the kernels on a GPU")
        return 2
    models = ["llama3.1-8b"] if args.quick else args.models.split(",")
    dtypes = [torch.bfloat16] if args.quick else [getattr(torch, d) for d in
                                                   args.dtypes.split(",")]
    # fp32 references must be fp32: no TF32 in matmuls or SDPA.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {triton.__version__}")
    start = time.time()
    runner = Runner(args.only, args.budget + (120 if args.sweep else 0))
    copy_gbps = copy_bandwidth()
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s (read + write)")
    print(f"{'variant':46s} {'rel err':>9s} {'wr':3s} {'ms':>8s} {'throughput':21s} "
          f"{'ref ms':>9s} {'speedup':7s} status")
    for dtype in dtypes:  # all bf16 rows first: if the budget runs out, fp32 ones are skipped
        for name in models:
            check_model(runner, name, MODELS[name], dtype, copy_gbps, args.tokens)
    if args.sweep:
        run_sweep(runner, MODELS["llama3.1-8b" if "llama3.1-8b" in models else models[0]],
                  copy_gbps)
    return _summary(runner.rows, copy_gbps, time.time() - start)


def _summary(rows: list[Row], copy_gbps: float, elapsed: float) -> int:
    bad = [r for r in rows if r.status != "ok"]
    print(f"\n==== summary ({elapsed:.0f} s, copy {copy_gbps:.0f} GB/s; ms = Triton kernel; "
          f"ref ms = PyTorch reference; for attention TorchAttention.forward, SDPA per "
          f"sequence, incl. its KV write; %cp = share of copy bandwidth) ====")
    print(f"{'variant':46s} {'rel err':>9s} {'wr':3s} {'ms':>8s} {'throughput':21s} "
          f"{'ref ms':>9s} {'speedup':7s} status")
    for r in rows:
        if not r.name.startswith("sweep"):
            print(_format(r))
    sweeps = {}
    for r in rows:
        if r.name.startswith("sweep") and r.status == "ok":
            case = r.name.split(" m")[0]
            if case not in sweeps or r.ms < sweeps[case].ms:
                sweeps[case] = r
    for r in sweeps.values():
        print("best " + _format(r))
    print(f"{len(rows) - len(bad)}/{len(rows)} ok" + (
        "; not ok: " + ", ".join(r.name for r in bad) if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
