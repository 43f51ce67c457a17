"""EngineCore: the step loop. Schedule, run, append, stop, free — one plain list at a time.

Imports the scheduler, block manager and seam types; talks to the runner through the small
`Runner` protocol so that the loop itself stays free of torch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from cormorant.config import EngineConfig
from cormorant.engine.block_manager import BlockManager
from cormorant.engine.scheduler import Scheduler, WaitingQueue
from cormorant.engine.sequence import Sequence
from cormorant.engine.types import EngineOutput, EngineRequest, SampleOutput, ScheduledBatch


class Runner(Protocol):
    num_blocks: int

    def execute(self, batch: ScheduledBatch) -> list[SampleOutput]: ...

    def release(self, seq_id: int) -> None: ...


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_waiting_prompt_tokens: int
    num_free_blocks: int
    num_total_blocks: int
    steps: int
    num_preemptions: int
    prefix_cache_queries: int  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int  # of those, tokens served from it


class EngineCore:
    def __init__(self, config: EngineConfig, runner: Runner, eos_token_ids: tuple[int, ...],
                 waiting: WaitingQueue | None = None):
        """waiting: the scheduler's waiting queue (default FIFO; gateway.fair_queue plugs in
        here, from the composition root, so the engine never imports it)."""
        self.config = config
        self.runner = runner
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_model_len = config.scheduler.max_model_len
        self.block_manager = BlockManager(runner.num_blocks, config.cache.block_size,
                                          config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.block_manager, waiting,
                                   max_model_len=self.max_model_len)
        self.requests: dict[str, list[Sequence]] = {}
        self.steps = 0
        self.num_preemptions = 0

    # -- requests ---------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> list[EngineOutput]:
        """Queue the request's n samples; returns error outputs at once if it can never run."""
        seqs = [Sequence(req.req_id, req.prompt_token_ids, req.sampling_params, index=i,
                         arrival_time=req.arrival_time, tenant=req.tenant,
                         priority=req.priority, weight=req.weight)
                for i in range(req.sampling_params.n)]
        try:
            for seq in seqs:
                self.scheduler.add(seq)
        except ValueError as e:
            for seq in seqs:
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
                self.scheduler.abort(seq)
                self.runner.release(seq.seq_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # -- the step ---------------------------------------------------------------------------
    def step(self) -> list[EngineOutput]:
        batch = self.scheduler.schedule()
        self.num_preemptions += batch.num_preempted
        if not batch.seqs:
            return []
        now = time.monotonic()
        for seq in batch.seqs:
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
        samples = self.runner.execute(batch)
        self.scheduler.update_after_step(batch)
        self.steps += 1
        return [out for seq, sample in zip(batch.seqs, samples)
                if (out := self._process(seq, sample)) is not None]

    def _process(self, seq: Sequence, sample: SampleOutput) -> EngineOutput | None:
        out = EngineOutput(seq.req_id, seq.index, [], prompt_logprobs=sample.prompt_logprobs,
                           num_prompt_tokens=seq.num_prompt_tokens,
                           num_cached_tokens=seq.num_cached_tokens,
                           first_scheduled_time=seq.first_scheduled_time)
        if sample.token_id is None:
            return out if sample.prompt_logprobs else None
        seq.append_token(sample.token_id)
        out.new_token_ids = [sample.token_id]
        out.new_logprobs = [sample.logprobs] if sample.logprobs is not None else None
        reason = self._stop_reason(seq, sample.token_id)
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
        self.scheduler.finish(seq)
        self.runner.release(seq.seq_id)
        siblings = self.requests.get(seq.req_id, [])
        if all(s.is_finished for s in siblings):
            self.requests.pop(seq.req_id, None)

    def stats(self) -> EngineStats:
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
        )

    def stop_sequence(self, req_id: str, index: int) -> None:
        """Finish one sample early (the frontend matched a stop string in its text)."""
        for seq in self.requests.get(req_id, []):
            if seq.index == index and not seq.is_finished:
                self.finish(seq, "stop")
                return
