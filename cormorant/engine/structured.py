"""Constrained decoding in the engine: one grammar matcher per sequence, a bitmask per step.

Plain Python, no torch and no tokenizer: the grammar engine sits behind `GrammarBackend`
(text.guidance_backend implements it with llguidance and the model's tokenizer; the frontend's
builder injects it). The design:

- `attach(seq)` gives each constrained sequence its own matcher when it is added (n > 1:
  one per sample, the compiled grammar shared through the backend's cache).
- `masks(scheduled)`: for the rows that sample this step and carry a matcher, the backend
  fills one bitmask row each (bit t of row r: token t allowed); the ScheduledBatch carries
  them as plain bytes (or a byte view) with their batch rows, so the runner applies them
  without knowing any grammar. A batch without constrained rows carries nothing and costs nothing.
  `masks_later(scheduled)` is the same, computed in a worker thread while the step loop does
  its other host work (the async step loop's overlap); `advance_then_mask` also overlaps
  the matchers' advances with the fills, a chunk of rows at a time. For a backend that
  fills at once (`fill_at_once`: xgrammar), the loop advances every row in one batched call,
  then the worker runs one fill while the loop processes the step's outputs. Where the
  matchers live in a grammar process (`advances_elsewhere`), or in FILL_MODE "job", the
  worker runs the advances too, and the sequences whose grammar ended come back with the
  masks (`PendingMasks.ended`), for the engine to finish one step late.
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
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Protocol

from cormorant.engine.scheduler import SchedulerOutput
from cormorant.engine.sequence import Sequence
from cormorant.engine.types import MaskBits

log = logging.getLogger(__name__)
MASK_CHUNK = 64  # rows advanced before their masks are sent to the worker (advance_then_mask)
HANDOVER_S = 1e-4  # the GIL switch interval while a one-call backend's job runs in the worker
# Where a one-call backend's (xgrammar's) work runs, CORMORANT_GRAMMAR_FILL:
# - "split" (default): the advances in the step loop (xgrammar's batched accept holds the GIL
#   all through, so in a thread it blocks the loop or waits on it), the fill alone in the
#   worker (one call with the GIL released all through: it overlaps the loop's host work);
#   but where the matchers live in a grammar process (`advances_elsewhere`), both run from
#   the worker, as in "job";
# - "job": advances and fill as one worker job (the grammar ends known a step late);
# - "inline": both in the step loop.
FILL_MODE = os.environ.get("CORMORANT_GRAMMAR_FILL", "") or "split"
if FILL_MODE not in ("split", "job", "inline"):
    log.warning("CORMORANT_GRAMMAR_FILL=%r is not split, job or inline: split", FILL_MODE)
    FILL_MODE = "split"


class GrammarMatcher(Protocol):
    def accept(self, token_id: int) -> bool: ...  # False: the token breaks the grammar

    def rollback(self, num_tokens: int) -> None: ...

    @property
    def is_terminated(self) -> bool: ...  # nothing but the end may follow


class GrammarBackend(Protocol):
    def new_matcher(self, spec) -> GrammarMatcher: ...  # ValueError for a bad constraint

    def fill_bitmasks(self, matchers: list[GrammarMatcher]) -> MaskBits: ...  # [R, W] i32 LE

    # Each matcher takes its token: (accepted, the grammar has ended) for each.
    def advance(self, matchers: list[GrammarMatcher], tokens: list[int]
                ) -> list[tuple[bool, bool]]: ...

    # True: these matchers advance without holding this process's GIL (a grammar process),
    # so the mask worker may run their advances as well as their fill.
    def advances_elsewhere(self, matchers: list[GrammarMatcher]) -> bool: ...

    # True: fill these masks in one call, after the matchers' advances, in one worker job
    # (xgrammar: its C++ releases the GIL, but its Python between the calls needs it, so a
    # fill in chunks interleaved with the step loop's advances would wait on the loop).
    def fill_at_once(self, matchers: list[GrammarMatcher]) -> bool: ...


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

    def __init__(self, rows: list[int], parts: list[Future[MaskBits]],
                 times: MaskTimes | None = None, ended: list[Sequence] | None = None) -> None:
        self.rows = rows
        self._parts = parts
        self._times = times
        # Sequences whose grammar ended with a token the worker advanced (advance_then_mask
        # on a one-call backend): known after result(), one step after their token went out.
        self.ended: list[Sequence] = [] if ended is None else ended

    @property
    def ready(self) -> bool:
        """The bits are computed: result() will not wait."""
        return all(part.done() for part in self._parts)

    def result(self) -> tuple[list[int], MaskBits]:
        if not self._parts:
            return self.rows, b""
        t0 = time.perf_counter()
        bits = (self._parts[0].result() if len(self._parts) == 1
                else b"".join(part.result() for part in self._parts))
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

    def masks(self, scheduled: SchedulerOutput) -> tuple[list[int], MaskBits]:
        """(batch rows, their packed bitmasks) for the constrained rows that sample now."""
        rows = self._rows(scheduled)
        if not rows:
            return [], b""
        return rows, self._fill([scheduled.seqs[i].grammar for i in rows])

    def _fill(self, matchers: list[GrammarMatcher]) -> MaskBits:
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
        if self.backend.fill_at_once(matchers):
            return PendingMasks(rows, [self._submit_job(lambda: self._fill(matchers))],
                                self.times)
        return PendingMasks(rows, [self._worker().submit(self._fill, matchers)], self.times)

    def _worker(self) -> ThreadPoolExecutor:
        """The mask worker: one thread, made on first use."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-masks")
        return self._pool

    def _submit_job(self, job: Callable[[], MaskBits]) -> Future[MaskBits]:
        """A job of a one-call backend in the worker thread (in the step loop itself under
        CORMORANT_GRAMMAR_FILL=inline). It holds the GIL only between its C++ calls; until
        it is done, the interpreter hands the GIL over every HANDOVER_S instead of every
        5 ms, so the worker waits ~0.1 ms (not up to 5 ms) for the step loop's Python each
        time it needs the GIL back."""
        if FILL_MODE == "inline":
            return _done(job())
        previous = sys.getswitchinterval()
        sys.setswitchinterval(min(previous, HANDOVER_S))

        def run() -> MaskBits:
            try:
                return job()
            finally:
                sys.setswitchinterval(previous)
        return self._worker().submit(run)

    def advance_then_mask(self, samples: list[tuple[Sequence, Any]],
                          scheduled: SchedulerOutput) -> tuple[set[int], PendingMasks]:
        """advance_all(samples), then masks_later(scheduled), overlapped: the next batch's
        constrained rows advance MASK_CHUNK at a time, and each chunk's masks are filled in
        the worker (the grammar engine's threads, the GIL released) while the step loop
        advances the next chunk; the wait at sampling is then for the last chunk only. A
        one-call backend (xgrammar) advances all rows here and fills in one worker job (see
        FILL_MODE)."""
        rows = self._rows(scheduled)
        if not rows:
            return self.advance_all(samples), PendingMasks([], [])
        order = [scheduled.seqs[i] for i in rows]
        matchers = [seq.grammar for seq in order]
        if self.backend.fill_at_once(matchers):
            if FILL_MODE == "job" or (FILL_MODE == "split"
                                      and self.backend.advances_elsewhere(matchers)):
                return set(), self._advance_and_fill_later(samples, rows, matchers)
            ended = self.advance_all(samples)
            return ended, PendingMasks(rows, [self._submit_job(lambda: self._fill(matchers))],
                                       self.times)
        sample_of = {id(seq): sample for seq, sample in samples}
        ended: set[int] = set()
        parts = []
        for start in range(0, len(order), MASK_CHUNK):
            chunk = order[start:start + MASK_CHUNK]
            ended |= self.advance_all([(seq, sample_of[id(seq)]) for seq in chunk
                                       if id(seq) in sample_of])
            parts.append(self._worker().submit(self._fill, [seq.grammar for seq in chunk]))
        in_rows = {id(seq) for seq in order}
        ended |= self.advance_all([(seq, sample) for seq, sample in samples
                                   if id(seq) not in in_rows])
        return ended, PendingMasks(rows, parts, self.times)

    def _advance_and_fill_later(self, samples: list[tuple[Sequence, Any]], rows: list[int],
                                matchers: list[GrammarMatcher]) -> PendingMasks:
        """advance_all(samples), then the fill of the next batch's matchers, both in the worker
        (one-call backends: xgrammar's advances and fill run in C++ with the GIL released),
        while the step loop processes this step's outputs and schedules the next. The
        sequences whose grammar ended come back late, in the PendingMasks' `ended`."""
        advances = _advances(samples)  # taken now: the loop may release a matcher meanwhile
        ended: list[Sequence] = []

        def job() -> MaskBits:
            ended.extend(self._advance(advances))
            return self._fill(matchers)

        return PendingMasks(rows, [self._submit_job(job)], self.times, ended)

    def advance_all(self, samples: list[tuple[Sequence, Any]]) -> set[int]:
        """Feed each constrained sequence its new token (samples: (sequence, SampleOutput)
        pairs; rows without a token or a matcher are skipped), one after the other (~4 us
        each; llguidance's parallel consume measured slower on the H200 host, b1s 256 rows:
        0.74 s of advances against 0.29 s); the seq_ids whose grammar has ended (the engine
        finishes them with "stop")."""
        return {seq.seq_id for seq in self._advance(_advances(samples))}

    def _advance(self, advances: list[tuple[Sequence, GrammarMatcher, int]]) -> list[Sequence]:
        """Each matcher takes its token; the sequences whose grammar has ended."""
        if not advances:
            return []
        assert self.backend is not None
        t0 = time.perf_counter()
        results = self.backend.advance([matcher for _, matcher, _ in advances],
                                       [token for _, _, token in advances])
        self.times.advance += time.perf_counter() - t0
        ended = []
        for (seq, _, token_id), (accepted, grammar_ended) in zip(advances, results):
            if not accepted:
                # Only a stage after the mask (a min_tokens ban leaving no allowed token)
                # gets here; the output so far is all the grammar admits.
                log.warning("sequence %s: token %d rejected by its grammar; finishing",
                            seq.seq_id, token_id)
                ended.append(seq)
            elif grammar_ended:
                ended.append(seq)
        return ended


def _advances(samples: list[tuple[Sequence, Any]]) -> list[tuple[Sequence, GrammarMatcher, int]]:
    """(sequence, its matcher, its new token) for the rows with both."""
    return [(seq, seq.grammar, sample.token_id) for seq, sample in samples
            if seq.grammar is not None and sample.token_id is not None]


def _done(bits: MaskBits) -> Future[MaskBits]:
    future: Future[MaskBits] = Future()
    future.set_result(bits)
    return future
