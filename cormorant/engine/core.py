"""EngineCore: the step loop. Schedule, run, append, stop, free — one plain list at a time.

Imports the scheduler, block manager, batch builder and seam types; talks to the runner
through the small `Runner` protocol, in plain data only (ScheduledBatch: new sequences once,
then diffs; finished ones with the next batch), so that the loop itself stays free of torch
and the batch could be broadcast to other processes.

Async scheduling (config.async_scheduling; vLLM v1's): `step()` schedules and launches step
n+1 while step n still runs on the device, and only then collects step n's ids. Every sequence
that samples at step n carries a placeholder token (PLACEHOLDER_TOKEN_ID) until its real id is
collected, so the scheduler gives it exactly one more token; the runner fills that input id on
the device from step n's sampled ids (the real id reaches its host copy with the next batch).
A sequence that finished (or was aborted) at step n may already run in step n+1: its extra
token is discarded at collection, and its blocks are freed at once (the device reuses them
only in steps launched later, on the same stream). Penalties read the token history on the
host, so a batch holding one collects step n before it launches. A grammar mask also needs
step n's token, but only for sampling: such a batch launches its forward alone
(`defer_sampling`), collects step n while it runs, then starts the masks in a worker thread
(`masks_later`) and returns; the sampling is queued (`runner.sample`) just before the next
launch or collect, whichever comes first (stream order: the next forward reads the sampled
ids), so the mask work overlaps the forward, the caller's output processing and the next
schedule. Where the worker also advances the matchers (xgrammar), a sequence whose grammar
ended is known only with the masks: it is finished at the next collect, with an output that
carries only its finish reason.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

from cormorant.config import EngineConfig
from cormorant.engine.batch_builder import BatchBuilder
from cormorant.engine.block_manager import BlockManager
from cormorant.engine.messages import EngineStats
from cormorant.engine.scheduler import Scheduler, SchedulerOutput, WaitingQueue
from cormorant.engine.sequence import Sequence, SequenceStatus
from cormorant.engine.structured import GrammarBackend, PendingMasks, StructuredDecoding
from cormorant.engine.types import (PLACEHOLDER_TOKEN_ID, EngineOutput, EngineRequest,
                                    MaskBits, SampleOutput, ScheduledBatch)
from cormorant.sampling_params import SamplingParams


class Runner(Protocol):
    num_blocks: int
    is_asynchronous: bool  # launches return before the device is done (CUDA): overlap pays

    def execute(self, batch: ScheduledBatch) -> list[SampleOutput]: ...

    # Async scheduling: execute in two halves (launch returns without waiting the device);
    # with defer_sampling, `sample` queues the sampling once the grammar masks are known.
    def launch(self, batch: ScheduledBatch, defer_sampling: bool = False) -> Any: ...

    def sample(self, handle: Any, mask_rows: list[int], mask_bits: MaskBits) -> None: ...

    def collect(self, handle: Any) -> list[SampleOutput]: ...


class EngineCore:
    def __init__(self, config: EngineConfig, runner: Runner, eos_token_ids: tuple[int, ...],
                 waiting: WaitingQueue | None = None, grammar: GrammarBackend | None = None):
        """waiting: the scheduler's waiting queue (default: config.scheduler.policy's);
        grammar: the grammar engine for constrained requests (None: they are refused)."""
        self.config = config
        self.runner = runner
        self.async_scheduling = (runner.is_asynchronous if config.async_scheduling is None
                                 else config.async_scheduling)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = config.scheduler.max_model_len
        self.block_manager = BlockManager(runner.num_blocks, config.cache.block_size,
                                          config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.block_manager, waiting,
                                   max_model_len=self.max_model_len)
        self.batches = BatchBuilder()
        self.structured = StructuredDecoding(grammar)
        self.requests: dict[str, list[Sequence]] = {}
        self.steps = 0
        self.num_preemptions = 0
        self._in_flight: tuple[SchedulerOutput, Any] | None = None  # launched, not collected
        # The in-flight step's sampling, waiting for its grammar masks (defer_sampling).
        self._unsampled: tuple[Any, PendingMasks] | None = None
        # Sequences whose grammar ended in the mask worker, to finish at the next collect.
        self._grammar_ended: list[Sequence] = []

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> list[EngineOutput]:
        """Queue the request's n samples; returns error outputs at once if it can never run."""
        seqs = [Sequence(req.req_id, req.prompt_token_ids, req.sampling_params, index=i,
                         arrival_time=req.arrival_time, tenant=req.tenant,
                         priority=req.priority, weight=req.weight,
                         cache_salt=req.cache_salt)
                for i in range(req.sampling_params.n)]
        try:
            for seq in seqs:
                self.structured.attach(seq)
            for seq in seqs:
                self.scheduler.add(seq)
        except ValueError as e:
            for seq in seqs:
                self.structured.release(seq)
                self.scheduler.abort(seq)
            return [EngineOutput(req.req_id, seq.index, [], finish_reason="abort", error=str(e))
                    for seq in seqs]
        self.requests[req.req_id] = seqs
        return []

    def abort_request(self, req_id: str) -> None:
        """Drop the request and free its blocks now (before the next step is scheduled)."""
        for seq in self.requests.pop(req_id, []):
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.structured.release(seq)
                self.scheduler.abort(seq)
                self.batches.finish(seq.seq_id)
                _drop_placeholder(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # -- the step ---------------------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        if self.async_scheduling:
            return self._step_async()
        batch = self.scheduler.schedule()
        self.num_preemptions += batch.num_preempted
        if not batch.seqs:
            return []
        samples = self.runner.execute(self._batch(batch))
        self.scheduler.update_after_step(batch)
        ended = self.structured.advance_all(list(zip(batch.seqs, samples)))
        return [out for seq, sample in zip(batch.seqs, samples)
                if (out := self._process(seq, sample, ended)) is not None]

    def _step_async(self) -> list[EngineOutput]:
        """Launch step n+1, then collect step n (outputs of step n, none of n+1 yet)."""
        batch = self.scheduler.schedule()
        self.num_preemptions += batch.num_preempted
        outputs: list[EngineOutput] = []
        if self._in_flight is not None and _reads_history(batch):
            outputs = self._collect()  # penalties need the real ids on the host
            batch = _without_finished(batch)
        # A grammar row over a placeholder: its mask needs step n's token, but the forward
        # does not. Launch the forward, collect step n meanwhile, then mask and sample.
        defer = self._in_flight is not None and _masks_wait(batch)
        handle = None
        if batch.seqs:
            self._queue_sampling()
            handle = (self.runner.launch(self._batch(batch, with_masks=False),
                                         defer_sampling=True) if defer
                      else self.runner.launch(self._batch(batch)))
        if handle is not None and defer:
            outputs += self._collect(masks_for=(batch, handle))
        else:
            outputs += self._collect()
        if handle is not None:
            # After the collect: blocks registered now hold real ids, not placeholders.
            self.scheduler.update_after_step(batch)
            for seq, do_sample in zip(batch.seqs, batch.do_sample):
                if do_sample and seq.status is SequenceStatus.RUNNING:
                    seq.append_token(PLACEHOLDER_TOKEN_ID)
            self._in_flight = (batch, handle)
        return outputs

    def _defer_sampling(self, handle: Any, pending: PendingMasks) -> None:
        """The launched step samples once its masks are computed: now if they are."""
        self._unsampled = (handle, pending)
        if pending.ready:
            self._queue_sampling()

    def _queue_sampling(self) -> None:
        """Queue the in-flight step's deferred sampling, its masks computed (waits for them)."""
        if self._unsampled is not None:
            handle, pending = self._unsampled
            self._unsampled = None
            self.runner.sample(handle, *pending.result())
            self._grammar_ended += pending.ended

    def _collect(self, masks_for: tuple[SchedulerOutput, Any] | None = None
                 ) -> list[EngineOutput]:
        """Wait for the in-flight step; put its ids in place of the placeholders, stop.
        masks_for: the batch just launched without its sampling, and its handle: its grammar
        masks are started while this step's matchers advance (or after, in the same worker
        job), and its sampling is queued when they are ready (at once, if they are ready
        before this step's outputs are processed; else before the next launch or collect).
        Sequences whose grammar ended in the worker at the previous collect finish first."""
        self._queue_sampling()
        outputs = self._finish_grammar_ended()
        if self._in_flight is None:
            if masks_for is not None:
                self._defer_sampling(masks_for[1], self.structured.masks_later(masks_for[0]))
            return outputs
        batch, handle = self._in_flight
        self._in_flight = None
        # finished or aborted while the step ran: its token is discarded
        kept = [(seq, sample) for seq, sample in zip(batch.seqs, self.runner.collect(handle))
                if not seq.is_finished]
        if masks_for is None:
            ended = self.structured.advance_all(kept)
        else:
            ended, pending = self.structured.advance_then_mask(kept, masks_for[0])
            self._defer_sampling(masks_for[1], pending)
        for seq, sample in kept:
            if seq.is_finished:
                continue  # finished meanwhile (by an earlier row's processing)
            if sample.token_id is not None:
                assert seq.token_ids[-1] == PLACEHOLDER_TOKEN_ID
                seq.token_ids.pop()
            if (out := self._process(seq, sample, ended)) is not None:
                outputs.append(out)
        return outputs

    def _finish_grammar_ended(self) -> list[EngineOutput]:
        """Finish ("stop") the sequences whose grammar ended with a token the mask worker
        advanced (their token went out with the step; this output carries only the end). A
        step already launched for one discards its token, as for any finished sequence."""
        outputs = []
        for seq in self._grammar_ended:
            if not seq.is_finished:
                self.finish(seq, "stop")
                out = _news(seq)
                out.finish_reason = "stop"
                outputs.append(out)
        self._grammar_ended = []
        return outputs

    def _batch(self, scheduled: SchedulerOutput, with_masks: bool = True) -> ScheduledBatch:
        """Stamp first-scheduled times; the runner's plain-data batch (with its grammar
        masks unless the caller adds them later)."""
        now = time.monotonic()
        for seq in scheduled.seqs:
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
        self.steps += 1
        batch = self.batches.build(scheduled)
        if with_masks:
            batch.mask_rows, batch.mask_bits = self.structured.masks(scheduled)
        return batch

    def _process(self, seq: Sequence, sample: SampleOutput, grammar_ended: set[int]
                 ) -> EngineOutput | None:
        """Append the sampled token and decide whether the sequence stops; grammar_ended:
        the seq_ids whose grammar ended with this token (StructuredDecoding.advance_all)."""
        out = _news(seq)
        out.prompt_logprobs = sample.prompt_logprobs
        if sample.token_id is None:
            return out if sample.prompt_logprobs else None
        seq.append_token(sample.token_id)
        out.new_token_ids = [sample.token_id]
        out.new_logprobs = [sample.logprobs] if sample.logprobs is not None else None
        reason = self._stop_reason(seq, sample.token_id)
        if reason is None and seq.seq_id in grammar_ended:
            reason = "stop"
        if reason is not None:
            out.finish_reason = reason
            if reason == "stop" and sample.token_id in seq.sampling_params.stop_token_ids:
                out.stop_token_id = sample.token_id
            self.finish(seq, reason)
        return out

    def _stop_reason(self, seq: Sequence, token_id: int) -> str | None:
        params = seq.sampling_params
        if seq.num_output_tokens >= params.min_tokens:
            if token_id in params.stop_token_ids:
                return "stop"
            if not params.ignore_eos and token_id in self.eos_token_ids:
                return "stop"
        if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            return "length"
        if seq.num_tokens >= self.scheduler.max_seq_len:
            return "length"
        return None

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self.structured.release(seq)
        self.scheduler.finish(seq)
        self.batches.finish(seq.seq_id)
        _drop_placeholder(seq)
        siblings = self.requests.get(seq.req_id, [])
        if all(s.is_finished for s in siblings):
            self.requests.pop(seq.req_id, None)

    def stats(self, now: float | None = None) -> EngineStats:
        """The counters now; `now`: when the loop last stepped (default: the call's time)."""
        bm = self.block_manager
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            num_waiting_prompt_tokens=self.scheduler.num_waiting_prompt_tokens,
            num_free_blocks=bm.num_free_blocks,
            num_total_blocks=self.runner.num_blocks,
            steps=self.steps,
            num_preemptions=self.num_preemptions,
            prefix_cache_queries=bm.num_prefix_queried_tokens,
            prefix_cache_hits=bm.num_prefix_hit_tokens,
            last_step_time=time.monotonic() if now is None else now,
            has_pending_work=bool(self.requests),
        )

    def warm_up(self) -> None:
        """One short greedy request through the whole step, before the engine says ready."""
        self.add_request(EngineRequest("__warmup__", [1, 2, 3],
                                       SamplingParams(max_tokens=2, temperature=0.0)))
        while self.has_unfinished_requests():
            self.step()

    def stop_sequence(self, req_id: str, index: int) -> None:
        """Finish one sample early (the frontend matched a stop string in its text)."""
        for seq in self.requests.get(req_id, []):
            if seq.index == index and not seq.is_finished:
                self.finish(seq, "stop")
                return


def _news(seq: Sequence) -> EngineOutput:
    """An output of this sequence with no token yet: what every output of it carries."""
    return EngineOutput(seq.req_id, seq.index, [], num_prompt_tokens=seq.num_prompt_tokens,
                        num_cached_tokens=seq.num_cached_tokens,
                        first_scheduled_time=seq.first_scheduled_time)


def _reads_history(batch: SchedulerOutput) -> bool:
    """Whether a sequence of the batch samples with penalties over a placeholder token."""
    return any(seq.sampling_params.has_penalties and seq.token_ids[-1] == PLACEHOLDER_TOKEN_ID
               for seq in batch.seqs)


def _masks_wait(batch: SchedulerOutput) -> bool:
    """Whether a grammar row of the batch samples over a placeholder token (its mask
    depends on that token)."""
    return any(seq.grammar is not None and seq.token_ids[-1] == PLACEHOLDER_TOKEN_ID
               for seq in batch.seqs)


def _without_finished(batch: SchedulerOutput) -> SchedulerOutput:
    """The batch less the sequences that finished since it was scheduled (their blocks are
    already free, so they must not run)."""
    keep = [i for i, seq in enumerate(batch.seqs) if not seq.is_finished]
    if len(keep) == len(batch.seqs):
        return batch
    return SchedulerOutput([batch.seqs[i] for i in keep],
                           [batch.num_new_tokens[i] for i in keep],
                           [batch.do_sample[i] for i in keep], batch.num_preempted)


def _drop_placeholder(seq: Sequence) -> None:
    """A sequence finished while a step was sampling for it keeps only its real tokens."""
    if seq.token_ids and seq.token_ids[-1] == PLACEHOLDER_TOKEN_ID:
        seq.token_ids.pop()
