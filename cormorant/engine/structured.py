"""Constrained decoding in the engine: one grammar matcher per sequence, a bitmask per step.

Plain Python, no torch and no tokenizer: the grammar engine sits behind `GrammarBackend`
(text.guidance_backend implements it with llguidance and the model's tokenizer; the frontend's
builder injects it). The design:

- `attach(seq)` gives each constrained sequence its own matcher when it is added (n > 1:
  one per sample, the compiled grammar shared through the backend's cache).
- `masks(scheduled)`: for the rows that sample this step and carry a matcher, the backend
  fills one bitmask row each (bit t of row r: token t allowed); the ScheduledBatch carries
  them as plain bytes with their batch rows, so the runner applies them without knowing any
  grammar. A batch without constrained rows carries nothing and costs nothing.
  `masks_later(scheduled)` is the same, computed in a worker thread while the step loop does
  its other host work (the async step loop's overlap); `advance_then_mask` also overlaps
  the matchers' advances with the fills, a chunk of rows at a time. Masks whose engine
  holds the GIL (the backend's `fill_inline`: xgrammar's) are filled in the step loop
  itself, in one call: a worker would only contend with the loop for the GIL.
- `advance_all(samples)` after each step: every constrained row's matcher takes its new
  token; the sequences whose grammar has ended come back (the engine finishes them with
  "stop"). A matcher only ever consumes tokens the
  sequence keeps, so after a preemption (recompute keeps the tokens) it is still in step.
- `rollback`: matchers can undo tokens (GrammarMatcher.rollback), for callers that fork.
- `times` (MaskTimes) sums where the host time goes: mask fills, waits for them, advances
  (`cormorant bench b1s` reports them).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from cormorant.engine.scheduler import SchedulerOutput
from cormorant.engine.sequence import Sequence

log = logging.getLogger(__name__)
MASK_CHUNK = 64  # rows advanced before their masks are sent to the worker (advance_then_mask)


class GrammarMatcher(Protocol):
    def accept(self, token_id: int) -> bool: ...  # False: the token breaks the grammar

    def rollback(self, num_tokens: int) -> None: ...

    @property
    def is_terminated(self) -> bool: ...  # nothing but the end may follow


class GrammarBackend(Protocol):
    def new_matcher(self, spec) -> GrammarMatcher: ...  # ValueError for a bad constraint

    def fill_bitmasks(self, matchers: list[GrammarMatcher]) -> bytes: ...  # [R, W] int32 LE

    # True: these masks fill faster in the calling thread (the engine holds the GIL while
    # filling them, so a worker thread would only contend with the step loop for it).
    def fill_inline(self, matchers: list[GrammarMatcher]) -> bool: ...


class MaskTimes:
    """Where constrained decoding's host time goes (seconds, summed since start): filling the
    masks (in the worker or inline; `fills` calls of `rows` rows in all), the step loop
    waiting for them, advancing matchers."""

    def __init__(self) -> None:
        self.fill = self.wait = self.advance = 0.0
        self.rows = self.fills = 0

    def as_dict(self) -> dict:
        return {"fill_s": self.fill, "wait_s": self.wait, "advance_s": self.advance,
                "rows": self.rows, "fills": self.fills}


class PendingMasks:
    """A step's grammar masks on their way: the batch rows now, the bits when computed (in
    parts, in row order)."""

    def __init__(self, rows: list[int], parts: list[Future[bytes]],
                 times: MaskTimes | None = None) -> None:
        self.rows = rows
        self._parts = parts
        self._times = times

    @property
    def ready(self) -> bool:
        """The bits are computed: result() will not wait."""
        return all(part.done() for part in self._parts)

    def result(self) -> tuple[list[int], bytes]:
        if not self._parts:
            return self.rows, b""
        t0 = time.perf_counter()
        bits = b"".join(part.result() for part in self._parts)
        if self._times is not None:
            self._times.wait += time.perf_counter() - t0
        return self.rows, bits


class StructuredDecoding:
    """The engine's side of constrained decoding; inert without constrained sequences."""

    def __init__(self, backend: GrammarBackend | None) -> None:
        self.backend = backend
        self.num_active = 0  # live sequences with a matcher: 0 makes masks() free
        self._pool: ThreadPoolExecutor | None = None  # masks_later's one worker, made on use
        self.times = MaskTimes()

    def release(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence's matcher."""
        if seq.grammar is not None:
            seq.grammar = None
            self.num_active -= 1

    def attach(self, seq: Sequence) -> None:
        """Give a constrained sequence its matcher; ValueError when it cannot have one."""
        spec = seq.sampling_params.structured_outputs
        if spec is None:
            return
        if self.backend is None:
            raise ValueError("this engine has no grammar backend for structured outputs")
        seq.grammar = self.backend.new_matcher(spec)
        self.num_active += 1

    def _rows(self, scheduled: SchedulerOutput) -> list[int]:
        """The batch rows that sample now under a grammar."""
        if not self.num_active:
            return []
        return [i for i, (seq, do_sample) in enumerate(zip(scheduled.seqs, scheduled.do_sample))
                if do_sample and seq.grammar is not None]

    def masks(self, scheduled: SchedulerOutput) -> tuple[list[int], bytes]:
        """(batch rows, their packed bitmasks) for the constrained rows that sample now."""
        rows = self._rows(scheduled)
        if not rows:
            return [], b""
        return rows, self._fill([scheduled.seqs[i].grammar for i in rows])

    def _fill(self, matchers: list[GrammarMatcher]) -> bytes:
        assert self.backend is not None
        t0 = time.perf_counter()
        bits = self.backend.fill_bitmasks(matchers)
        self.times.fill += time.perf_counter() - t0
        self.times.rows += len(matchers)
        self.times.fills += 1
        return bits

    def masks_later(self, scheduled: SchedulerOutput) -> PendingMasks:
        """masks(), computed in a worker thread (the grammar engine releases the GIL), so the
        step loop's other host work runs meanwhile; `.result()` waits for them. The matchers
        must not advance before then (the loop collects this step only after its sampling)."""
        rows = self._rows(scheduled)
        if not rows:
            return PendingMasks([], [])
        matchers = [scheduled.seqs[i].grammar for i in rows]
        if self.backend.fill_inline(matchers):
            return PendingMasks(rows, [_done(self._fill(matchers))], self.times)
        return PendingMasks(rows, [self._submit(matchers)], self.times)

    def _submit(self, matchers: list[GrammarMatcher]) -> Future[bytes]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
        return self._pool.submit(self._fill, matchers)

    def advance_then_mask(self, samples: list[tuple[Sequence, Any]],
                          scheduled: SchedulerOutput) -> tuple[set[int], PendingMasks]:
        """advance_all(samples), then masks_later(scheduled), overlapped: the next batch's
        constrained rows advance MASK_CHUNK at a time, and each chunk's masks are filled in
        the worker (the grammar engine's threads, the GIL released) while the step loop
        advances the next chunk; the wait at sampling is then for the last chunk only."""
        rows = self._rows(scheduled)
        if not rows:
            return self.advance_all(samples), PendingMasks([], [])
        order = [scheduled.seqs[i] for i in rows]
        if self.backend.fill_inline([seq.grammar for seq in order]):
            ended = self.advance_all(samples)
            bits = self._fill([seq.grammar for seq in order])
            return ended, PendingMasks(rows, [_done(bits)], self.times)
        sample_of = {id(seq): sample for seq, sample in samples}
        ended: set[int] = set()
        parts = []
        for start in range(0, len(order), MASK_CHUNK):
            chunk = order[start:start + MASK_CHUNK]
            ended |= self.advance_all([(seq, sample_of[id(seq)]) for seq in chunk
                                       if id(seq) in sample_of])
            parts.append(self._submit([seq.grammar for seq in chunk]))
        in_rows = {id(seq) for seq in order}
        ended |= self.advance_all([(seq, sample) for seq, sample in samples
                                   if id(seq) not in in_rows])
        return ended, PendingMasks(rows, parts, self.times)

    def advance_all(self, samples: list[tuple[Sequence, Any]]) -> set[int]:
        """Feed each constrained sequence its new token (samples: (sequence, SampleOutput)
        pairs; rows without a token or a matcher are skipped), one after the other (~4 us
        each; llguidance's parallel consume measured slower on the H200 host, b1s 256 rows:
        0.74 s of advances against 0.29 s); the seq_ids whose grammar has ended (the engine
        finishes them with "stop")."""
        rows = [(seq, sample.token_id) for seq, sample in samples
                if seq.grammar is not None and sample.token_id is not None]
        if not rows:
            return set()
        t0 = time.perf_counter()
        accepted = [seq.grammar.accept(token) for seq, token in rows]
        self.times.advance += time.perf_counter() - t0
        ended = set()
        for (seq, token_id), ok in zip(rows, accepted):
            if not ok:
                # Only a stage after the mask (a min_tokens ban leaving no allowed token)
                # gets here; the output so far is all the grammar admits.
                log.warning("sequence %s: token %d rejected by its grammar; finishing",
                            seq.seq_id, token_id)
                ended.add(seq.seq_id)
            elif seq.grammar.is_terminated:
                ended.add(seq.seq_id)
        return ended


def _done(bits: bytes) -> Future[bytes]:
    future: Future[bytes] = Future()
    future.set_result(bits)
    return future
