"""Turn a ScheduledBatch's rows (the runner's RequestStates) into one forward's packed tensors.

The per-step ints are written with numpy into one staging buffer (pinned on CUDA, so the copy
is truly asynchronous) in a fixed layout, `Layout`: the int64 fields first (input_ids, positions,
slot_mapping, sample_rows), then the int32 ones (query_start_loc, seq_lens, block_tables). One
host-to-device copy per step moves it all; the device tensors are views of that one buffer.
A CUDA-graph replay (runner.cuda_graphs) copies the same head bytes straight into its static
buffers instead, so the eager and the graph paths share every line of the packing.

Block tables are the bulk of the ints (a row per sequence of up to max_model_len / block_size
ids): `runner.request_state.BlockTableRows` keeps them in one persistent numpy array, so a
step costs one fancy-index gather instead of rebuilding thousands of Python ints.

Imports numpy, torch, the engine's plain types, runner.request_state and layers.attention's
metadata type.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from cormorant.engine.types import ScheduledBatch
from cormorant.layers.attention import AttentionMetadata
from cormorant.runner.request_state import BlockTableRows, RequestState


@dataclass
class PromptLogprobRows:
    """Rows of this step whose logits score the next prompt token (prompt_logprobs requests)."""

    batch_index: int  # which sequence of the batch
    rows: list[int]  # hidden-state rows, in position order
    target_ids: list[int]  # the prompt token each row predicts
    num_top: int  # how many alternatives per position


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    attn: AttentionMetadata
    sample_rows: torch.Tensor | None  # [num_sampling] int64; None: every row samples, in order
    sampling_seqs: list[RequestState]  # in sample_rows order
    prompt_logprob_rows: list[PromptLogprobRows]


# ------------------------------------------------------------------------------- layout
_INT64_FIELDS = ("input_ids", "positions", "slot_mapping", "sample_rows")
_INT32_FIELDS = ("query_start_loc", "seq_lens", "block_tables")


class Layout:
    """Byte offsets of each field in the packed buffer. int64 fields come first; every field
    starts on a 16-byte boundary, so the pointers kernels get are always 16-byte aligned
    (Triton specialises on pointer alignment: an offset that depended on the batch would
    compile a new kernel variant mid-serving). `head_bytes` ends at seq_lens (everything a
    decode graph needs apart from the block tables). Build with `layout()`, which reuses the
    object for repeated shapes (a decode batch keeps its shape for steps)."""

    def __init__(self, num_tokens: int, num_seqs: int, num_sample_rows: int, table_rows: int,
                 table_width: int) -> None:
        self.num_tokens, self.num_seqs = num_tokens, num_seqs
        self.num_sample_rows = num_sample_rows
        self.table_rows, self.table_width = table_rows, table_width
        self.int64_counts = [num_tokens, num_tokens, num_tokens, num_sample_rows]
        self.int32_counts = [num_seqs + 1, num_seqs, table_rows * table_width]
        self.int64_sizes = _with_padding(self.int64_counts, 2)  # [count, pad, count, pad, ...]
        self.int32_sizes = _with_padding(self.int32_counts, 4)
        self.int32_sizes[-1] = 0  # nothing follows the block tables
        self.int32_start = 8 * sum(self.int64_sizes)  # byte offset of the int32 fields
        self.nbytes = self.int32_start + 4 * sum(self.int32_sizes)
        self.head_bytes = self.int32_start + 4 * sum(self.int32_sizes[:4])  # block_tables


def _with_padding(counts: list[int], per_16_bytes: int) -> list[int]:
    """Each count followed by the elements that pad it to a 16-byte boundary."""
    out = []
    for count in counts:
        out += [count, -count % per_16_bytes]
    return out


@functools.lru_cache(maxsize=256)
def layout(num_tokens: int, num_seqs: int, num_sample_rows: int, table_rows: int,
           table_width: int) -> Layout:
    return Layout(num_tokens, num_seqs, num_sample_rows, table_rows, table_width)


def numpy_views(buf: np.ndarray, lay: Layout) -> dict[str, np.ndarray]:
    """Typed views of a uint8 host buffer; block_tables as [table_rows, table_width]."""
    views = {}
    for names, sizes, array in (
            (_INT64_FIELDS, lay.int64_sizes, buf[:lay.int32_start].view(np.int64)),
            (_INT32_FIELDS, lay.int32_sizes, buf[lay.int32_start:lay.nbytes].view(np.int32))):
        offset = 0
        for name, count, pad in zip(names, sizes[::2], sizes[1::2]):
            views[name] = array[offset:offset + count]
            offset += count + pad
    views["block_tables"] = views["block_tables"].reshape(lay.table_rows, lay.table_width)
    return views


def tensor_views(buf: torch.Tensor, lay: Layout) -> dict[str, torch.Tensor]:
    """The same views of a uint8 torch buffer (device or host), in few torch calls: each
    call costs microseconds of host time on the step's critical path."""
    int64 = buf[:lay.int32_start].view(torch.int64)
    int32 = buf[lay.int32_start:lay.nbytes].view(torch.int32)
    views = dict(zip(_INT64_FIELDS, int64.split_with_sizes(lay.int64_sizes)[::2]))
    views.update(zip(_INT32_FIELDS, int32.split_with_sizes(lay.int32_sizes)[::2]))
    views["block_tables"] = views["block_tables"].view(lay.table_rows, lay.table_width)
    return views


# ------------------------------------------------------------------------------ staging
class StagingBuffers:
    """Two host buffers used in turn (pinned on CUDA). A buffer is rewritten only after the
    copy that last read it has finished (an event per buffer), so a non_blocking copy can
    never see the next step's bytes."""

    def __init__(self, device: torch.device, nbytes: int = 1 << 16) -> None:
        self.device = device
        self._pin = device.type == "cuda"
        self._bufs = [self._alloc(nbytes), self._alloc(nbytes)]
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._current = 0

    def _alloc(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._pin)

    def acquire(self, nbytes: int) -> torch.Tensor:
        self._current ^= 1
        event = self._events[self._current]
        if event is not None:
            event.synchronize()
        if self._bufs[self._current].numel() < nbytes:
            self._bufs[self._current] = self._alloc(max(nbytes, 2 * self._bufs[self._current]
                                                        .numel()))
        return self._bufs[self._current]

    def mark_copied(self) -> None:
        """Call after issuing the copies that read the current buffer."""
        if self._pin:
            event = self._events[self._current] or torch.cuda.Event()
            event.record()
            self._events[self._current] = event


# ------------------------------------------------------------------------------ packing
@dataclass
class HostInputs:
    """One step's ints packed on the host, before any copy."""

    layout: Layout
    staging: torch.Tensor  # uint8 host buffer holding layout.nbytes packed bytes
    views: dict[str, np.ndarray]
    num_real_seqs: int  # sequences of the batch; rows past it are graph padding
    query_lens: list[int]  # per (padded) sequence
    seq_lens: list[int]
    max_query_len: int
    max_seq_len: int
    samples_all_rows: bool  # every row samples, in row order (pure decode)
    sample_rows: list[int]  # the hidden-state row of each sampling sequence
    sample_indices: list[int]  # its index in the batch
    sampling_seqs: list[RequestState]
    prompt_logprob_rows: list[PromptLogprobRows]
    # Async scheduling: rows whose input id is a placeholder (negative) for the token the
    # previous launch is sampling, and their sequences (model_runner.fill_placeholders).
    placeholder_rows: list[int] = field(default_factory=list)
    placeholder_seq_ids: list[int] = field(default_factory=list)


class InputPreparer:
    """Packs batches (prepare) and moves them to the device (to_device); one per runner."""

    def __init__(self, block_size: int, max_model_len: int, max_num_seqs: int,
                 device: torch.device) -> None:
        self.block_size = block_size
        self.device = device
        max_blocks = -(-max_model_len // block_size)
        self.block_tables = BlockTableRows(2 * max_num_seqs + 16, max_blocks)
        self.staging = StagingBuffers(device)
        self._device_buf = torch.empty(1 << 16, dtype=torch.uint8, device=device)
        self._device_views: dict[Layout, dict[str, torch.Tensor]] = {}

    def release(self, seq_id: int) -> None:
        self.block_tables.release(seq_id)

    def prepare(self, seqs: list[RequestState], batch: ScheduledBatch,
                pad_to: int | None = None) -> HostInputs:
        """Pack the batch, whose rows' states are `seqs`. pad_to (decode batches only) adds
        padding sequences up to that size: one token each, slot -1 (never written), context
        length 1, position 0."""
        query_lens = batch.num_new_tokens
        num_seqs, num_tokens = len(seqs), sum(query_lens)
        starts = np.fromiter((seq.num_computed_tokens for seq in seqs), np.int64, num_seqs)
        q = np.asarray(query_lens, dtype=np.int64)  # [S]
        seq_lens = starts + q  # [S]
        max_query_len, max_seq_len = max(query_lens), int(seq_lens.max())
        is_decode = max_query_len == 1
        width = -(-max_seq_len // self.block_size)  # blocks the longest context touches
        rows = self.block_tables.rows_for(seqs)
        sample_rows, sample_indices, sampling_seqs, prompt_rows = _sampling_rows(seqs, batch)
        samples_all_rows = is_decode and len(sample_rows) == num_seqs
        padded = pad_to if pad_to is not None else num_seqs
        assert padded >= num_seqs and (pad_to is None or is_decode)
        # A graph's static head has no sample_rows field: its rare partial case gets its own
        # copy (runner.cuda_graphs), so the packed head bytes match the static layout.
        packed_rows = 0 if samples_all_rows or pad_to is not None else len(sample_rows)
        lay = layout(num_tokens + padded - num_seqs, padded, packed_rows, num_seqs, width)
        staging = self.staging.acquire(lay.nbytes)
        v = numpy_views(staging.numpy(), lay)
        v["block_tables"][:] = self.block_tables.table[rows, :width]  # [S, W]
        v["seq_lens"][:num_seqs] = seq_lens
        v["query_start_loc"][0] = 0
        np.cumsum(q, out=v["query_start_loc"][1:num_seqs + 1])
        self._fill_tokens(v, seqs, query_lens, starts, is_decode)
        placeholder_rows = np.flatnonzero(v["input_ids"][:num_tokens] < 0)
        if lay.num_sample_rows:
            v["sample_rows"][:] = sample_rows
        q_list, s_list = list(query_lens), seq_lens.tolist()
        if padded > num_seqs:
            _pad_decode(v, num_seqs, padded)
            q_list += [1] * (padded - num_seqs)
            s_list += [1] * (padded - num_seqs)
        host = HostInputs(lay, staging, v, num_seqs, q_list, s_list, max_query_len,
                          max_seq_len, samples_all_rows, sample_rows, sample_indices,
                          sampling_seqs, prompt_rows)
        if len(placeholder_rows):
            owners = (placeholder_rows if is_decode else np.searchsorted(
                v["query_start_loc"][1:num_seqs + 1], placeholder_rows, side="right"))
            host.placeholder_rows = placeholder_rows.tolist()
            host.placeholder_seq_ids = [seqs[i].seq_id for i in owners.tolist()]
        return host

    def _fill_tokens(self, v: dict[str, np.ndarray], seqs: list[RequestState],
                     query_lens: list[int], starts: np.ndarray, is_decode: bool) -> None:
        """input_ids, positions and slot_mapping of the real rows; tables already filled."""
        num_seqs, tables = len(seqs), v["block_tables"]
        if is_decode:  # one token per sequence: no per-token Python at all
            positions = starts
            v["input_ids"][:num_seqs] = [seq.token_ids[seq.num_computed_tokens] for seq in seqs]
            block_idx = tables[np.arange(num_seqs), positions // self.block_size]
        else:
            q = np.asarray(query_lens, dtype=np.int64)
            num_tokens = int(q.sum())
            first = np.repeat(starts - (np.cumsum(q) - q), q)  # [T]: start - row offset
            positions = first + np.arange(num_tokens)
            v["input_ids"][:num_tokens] = np.fromiter(itertools.chain.from_iterable(
                seq.token_ids[seq.num_computed_tokens:seq.num_computed_tokens + n]
                for seq, n in zip(seqs, query_lens)), np.int64, num_tokens)
            owner = np.repeat(np.arange(num_seqs), q)  # [T]: the sequence of each row
            block_idx = tables[owner, positions // self.block_size]
        v["positions"][:len(positions)] = positions
        # int64 before the multiply: block_id * block_size may pass 2**31 on big caches.
        np.add(block_idx.astype(np.int64) * self.block_size, positions % self.block_size,
               out=v["slot_mapping"][:len(positions)])

    def to_device(self, host: HostInputs) -> ModelInputs:
        """One copy of the packed bytes into the persistent device buffer; the tensors are
        views of it, cached per layout (a decode batch keeps its layout for many steps).

        Reusing one device buffer is safe: the copy and every kernel that reads the buffer
        are queued on the same stream, so a step's copy cannot overtake the previous step's
        reads. ModelInputs are therefore valid until the next to_device."""
        lay = host.layout
        if self._device_buf.numel() < lay.nbytes:
            self._device_buf = torch.empty(max(lay.nbytes, 2 * self._device_buf.numel()),
                                           dtype=torch.uint8, device=self.device)
            self._device_views.clear()
        self._device_buf[:lay.nbytes].copy_(host.staging[:lay.nbytes], non_blocking=True)
        self.staging.mark_copied()
        t = self._device_views.get(lay)
        if t is None:
            if len(self._device_views) > 64:  # many shapes (prefill chunks): start over
                self._device_views.clear()
            t = self._device_views[lay] = tensor_views(self._device_buf, lay)
        return model_inputs(host, t["input_ids"], t["positions"], t["slot_mapping"],
                            t["query_start_loc"], t["seq_lens"], t["block_tables"],
                            t["sample_rows"] if lay.num_sample_rows else None)


def model_inputs(host: HostInputs, input_ids: torch.Tensor, positions: torch.Tensor,
                 slot_mapping: torch.Tensor, query_start_loc: torch.Tensor,
                 seq_lens: torch.Tensor, block_tables: torch.Tensor,
                 sample_rows: torch.Tensor | None) -> ModelInputs:
    attn = AttentionMetadata(
        slot_mapping=slot_mapping, query_start_loc=query_start_loc, seq_lens=seq_lens,
        block_tables=block_tables, max_query_len=host.max_query_len,
        max_seq_len=host.max_seq_len, query_lens_cpu=host.query_lens,
        seq_lens_cpu=host.seq_lens)
    return ModelInputs(input_ids, positions, attn, sample_rows, host.sampling_seqs,
                       host.prompt_logprob_rows)


def _pad_decode(v: dict[str, np.ndarray], num_seqs: int, padded: int) -> None:
    """Padding sequences: token 0 at position 0, slot -1 (the KV write skips it), one query
    row each and a context of 1 key, so attention reads one valid (stale) slot and every real
    row's result is untouched."""
    v["input_ids"][num_seqs:] = 0
    v["positions"][num_seqs:] = 0
    v["slot_mapping"][num_seqs:] = -1
    v["seq_lens"][num_seqs:] = 1
    last = v["query_start_loc"][num_seqs]
    v["query_start_loc"][num_seqs + 1:] = np.arange(last + 1, last + 1 + padded - num_seqs)


def _sampling_rows(seqs: list[RequestState], batch: ScheduledBatch
                   ) -> tuple[list[int], list[int], list[RequestState], list[PromptLogprobRows]]:
    """(row and batch index of each sampling sequence, those sequences, prompt-logprob
    rows)."""
    sample_rows: list[int] = []
    sample_indices: list[int] = []
    sampling_seqs: list[RequestState] = []
    prompt_rows: list[PromptLogprobRows] = []
    end = 0
    for i, (seq, num_new, do_sample) in enumerate(
            zip(seqs, batch.num_new_tokens, batch.do_sample)):
        end += num_new
        if do_sample:
            sample_rows.append(end - 1)
            sample_indices.append(i)
            sampling_seqs.append(seq)
        if seq.sampling_params.prompt_logprobs is not None:
            rows = _prompt_logprob_rows(i, seq, num_new, end - num_new)
            if rows is not None:
                prompt_rows.append(rows)
    return sample_rows, sample_indices, sampling_seqs, prompt_rows


def _prompt_logprob_rows(index: int, seq: RequestState, num_new: int, first_row: int
                         ) -> PromptLogprobRows | None:
    start = seq.num_computed_tokens
    num_prompt = seq.num_prompt_tokens
    if start >= num_prompt - 1:
        return None
    last = min(start + num_new, num_prompt - 1)  # the last one predicts nothing
    return PromptLogprobRows(index, [first_row + p - start for p in range(start, last)],
                             seq.token_ids[start + 1:last + 1],
                             seq.sampling_params.prompt_logprobs)


def dummy_prefill_inputs(num_tokens: int, max_model_len: int, block_size: int,
                         device: torch.device) -> ModelInputs:
    """Prompt chunks totalling num_tokens (each at most max_model_len long, so positions stay
    inside the rotary table) that write nothing (slots -1) and read only block 0: the
    largest forward a step can run, for the memory profile."""
    lens = [max_model_len] * (num_tokens // max_model_len)
    if num_tokens % max_model_len:
        lens.append(num_tokens % max_model_len)
    width = -(-max(lens) // block_size)
    starts = np.concatenate([[0], np.cumsum(lens)])
    positions = np.concatenate([np.arange(n) for n in lens])
    attn = AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_tables=torch.zeros(len(lens), width, dtype=torch.int32, device=device),
        max_query_len=max(lens), max_seq_len=max(lens), query_lens_cpu=lens,
        seq_lens_cpu=list(lens))
    return ModelInputs(torch.zeros(num_tokens, dtype=torch.int64, device=device),
                       torch.from_numpy(positions).to(device), attn, None, [], [])
