"""CUDA graphs for pure-decode steps: one captured model forward per bucketed batch size.

A decode step of n sequences (every num_new_tokens == 1) is padded up to the next bucket
(1, 2, 4, 8, then multiples of 8 up to max_num_seqs, at most 512) and replayed from static
input buffers. Padding sequences carry token 0 at position 0, slot -1 (the KV write skips
them), one query row and a context of one key, so they read one stale but valid cache slot and
never touch a real row (every op of the decoder is row-local apart from attention, which is
per sequence). Their hidden states are sliced off before the logits.

Static buffers: the "head" of runner.inputs' packed layout (input_ids, positions,
slot_mapping, query_start_loc, seq_lens) for the largest bucket, and block tables
[max_bucket, max_model_len / block_size]. A replay copies the step's packed head bytes and its
[n, width] block-table corner straight from the pinned staging buffer (two async copies), then
replays. Columns past width and rows past n keep stale block ids, which are never read (a
sequence reads only the blocks its seq_len covers; padding rows read column 0).

Capture needs an attention backend with no host synchronisation whose launch shape does not
depend on context lengths (TritonAttention picks it from num_seqs and max_query_len only), so
one graph serves every context length up to max_model_len. Graphs are captured largest first
into one memory pool, after the KV cache is allocated. With capture=False the same buffers and
padding run eagerly: the CPU tests exercise everything but the capture itself.

Imports torch, layers.attention (metadata) and runner.inputs (the packed layout).
"""
from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable

import torch

from cormorant.layers.attention import AttentionBackend, AttentionMetadata
from cormorant.runner.inputs import HostInputs, layout, tensor_views

log = logging.getLogger(__name__)

MAX_GRAPH_BATCH = 512


def graph_batch_sizes(max_num_seqs: int, cap: int = MAX_GRAPH_BATCH) -> list[int]:
    """1, 2, 4, 8, 16, 24, 32, ... (multiples of 8) up to min(max_num_seqs, cap), which is
    always included so every batch up to it has a bucket."""
    limit = max(1, min(max_num_seqs, cap))
    sizes = [1, 2, 4, 8, *range(16, limit + 1, 8)]
    return sorted({s for s in sizes if s < limit} | {limit})


def is_capturable(backend: AttentionBackend | None) -> bool:
    """The backend protocol declares it: TritonAttention is safe to capture; the reference
    TorchAttention synchronises (and loops over host lists), so it is not."""
    return backend is not None and bool(backend.supports_cuda_graphs)


def find_attention_backend(model: torch.nn.Module) -> object | None:
    """The backend the model's attention layers hold (one per model)."""
    for module in model.modules():
        backend = getattr(module, "attn_backend", None)
        if backend is not None:
            return backend
    return None


class DecodeGraphs:
    """Static decode inputs plus one forward per bucket (a CUDA graph, or eager)."""

    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor],
                 batch_sizes: list[int], max_model_len: int, block_size: int,
                 device: torch.device) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.batch_sizes = batch_sizes
        self.max_model_len = max_model_len
        self.device = device
        max_bs = batch_sizes[-1]
        self.max_blocks = -(-max_model_len // block_size)
        self._head = torch.zeros(layout(max_bs, max_bs, 0, 0, 0).head_bytes,
                                 dtype=torch.uint8, device=device)
        self._block_tables = torch.zeros(max_bs, self.max_blocks, dtype=torch.int32,
                                         device=device)
        self._forward: dict[int, Callable[[HostInputs], torch.Tensor]] = {}

    def bucket(self, num_new_tokens: list[int]) -> int | None:
        """The padded size a batch (its tokens per row) replays at, or None to run it
        eagerly."""
        num_seqs = len(num_new_tokens)
        if num_seqs > self.batch_sizes[-1] or max(num_new_tokens) != 1:
            return None
        return self.batch_sizes[bisect.bisect_left(self.batch_sizes, num_seqs)]

    # -- building ---------------------------------------------------------------------------
    def capture(self) -> None:
        """Warm up and capture every bucket, largest first, sharing one memory pool."""
        start = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for bs in reversed(self.batch_sizes):
                self._forward[bs] = self._capture_one(bs, pool)
        torch.cuda.synchronize(self.device)
        log.info("captured %d decode CUDA graphs (batch sizes %s..%s) in %.1f s",
                 len(self.batch_sizes), self.batch_sizes[0], self.batch_sizes[-1],
                 time.perf_counter() - start)

    def use_eager(self) -> None:
        """The same static buffers and padding, run eagerly (CPU tests, debugging)."""
        for bs in self.batch_sizes:
            self._forward[bs] = self._eager_forward(bs)

    def _static(self, bs: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return tensor_views(self._head, layout(bs, bs, 0, 0, 0)), self._block_tables[:bs]

    def _capture_one(self, bs: int, pool) -> Callable[[HostInputs], torch.Tensor]:
        v, tables = self._static(bs)
        # Every row a padding row: the warm-up run writes nothing into the cache.
        v["input_ids"].zero_()
        v["positions"].zero_()
        v["slot_mapping"].fill_(-1)
        v["seq_lens"].fill_(1)
        v["query_start_loc"].copy_(torch.arange(bs + 1, dtype=torch.int32))
        # max_seq_len is the bound the graph must serve; host lists are never read by a
        # capturable backend (they would be frozen into the graph otherwise).
        meta = AttentionMetadata(v["slot_mapping"], v["query_start_loc"], v["seq_lens"], tables,
                                 max_query_len=1, max_seq_len=self.max_model_len,
                                 query_lens_cpu=[1] * bs, seq_lens_cpu=[1] * bs)
        # Warm-up outside the capture, on a side stream as torch.cuda.graph's docs advise:
        # Triton compiles, cuBLAS picks its kernels and sets up its per-stream workspace.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.model(v["input_ids"], v["positions"], self.kv_caches, meta)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = self.model(v["input_ids"], v["positions"], self.kv_caches, meta)

        def replay(_host: HostInputs) -> torch.Tensor:
            graph.replay()
            return out  # [bs, hidden], overwritten by the next replay of any bucket
        return replay

    def _eager_forward(self, bs: int) -> Callable[[HostInputs], torch.Tensor]:
        v, tables = self._static(bs)

        def forward(host: HostInputs) -> torch.Tensor:
            meta = AttentionMetadata(v["slot_mapping"], v["query_start_loc"], v["seq_lens"],
                                     tables, max_query_len=1, max_seq_len=host.max_seq_len,
                                     query_lens_cpu=host.query_lens,
                                     seq_lens_cpu=host.seq_lens)
            return self.model(v["input_ids"], v["positions"], self.kv_caches, meta)
        return forward

    # -- running ----------------------------------------------------------------------------
    def run(self, host: HostInputs, fill_input_ids: Callable[[torch.Tensor], None] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden [n, hidden] of the real rows, sample rows or None when all rows sample).
        `host` must be prepared with pad_to=bucket(num_new_tokens); the caller marks its staging
        buffer copied afterwards. fill_input_ids (async scheduling) patches the static
        input_ids on the device after the copies, before the replay."""
        bs, n = host.layout.num_seqs, host.num_real_seqs
        width, head = host.layout.table_width, host.layout.head_bytes
        assert bs in self._forward and width <= self.max_blocks
        self._head[:head].copy_(host.staging[:head], non_blocking=True)
        tables = host.staging[head:head + 4 * n * width].view(torch.int32).view(n, width)
        self._block_tables[:n, :width].copy_(tables, non_blocking=True)
        if fill_input_ids is not None:
            fill_input_ids(self._head[:8 * bs].view(torch.int64))  # input_ids: offset 0
        hidden = self._forward[bs](host)[:n]
        sample_rows = None
        if not host.samples_all_rows:  # a prompt chunk of one token: rare, its own copy
            sample_rows = torch.tensor(host.sample_rows, dtype=torch.int64).to(self.device)
        return hidden, sample_rows
