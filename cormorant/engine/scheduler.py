"""Scheduler: decides, each step, which sequences compute how many tokens (vLLM v1 style).

Plain Python, no torch. Imports: the standard library, `cormorant.config`,
`cormorant.engine.{sequence, block_manager, policies}`.

There is no prefill or decode phase. Every sequence has `num_computed_tokens` and a target
(`seq.num_tokens`: prompt plus generated tokens); a per-step token budget closes the gaps.
Running sequences go first in admission order (a decode needs 1 token, an unfinished prefill
gets a chunk), then waiting ones are admitted through the prefix cache. Chunked prefill,
prefix caching and recompute preemption all fall out of that one rule.

Two classes: interactive sequences, and background ones (batch jobs: priority at or above
engine.types.BATCH_PRIORITY) that wait in a queue of their own and fill only what interactive
work leaves spare. Each step: interactive running sequences first, then waiting interactive
ones (which take seats and KV blocks from running background sequences by preempting them,
so an interactive request gives way to no batch, within the step it arrives in), then
background running sequences with the token budget left, then, only when no interactive
sequence waits, waiting background ones. `running` keeps interactive sequences before
background ones, so the preemption victim (the last) is a background one while any runs.

Samples of one request (n > 1) share the prompt's KV: only the first sibling (the "leader") is
queued; the others are parked until the leader's prompt is computed and its full blocks are
registered, then they go to the front of the queue and hit the prefix cache, recomputing only
the last partial block.

Engine call order per step: `schedule()` -> run it (engine.batch_builder turns it into the
runner's plain ScheduledBatch) -> `update_after_step(scheduled)` ->
append sampled tokens, decide stops -> `finish(seq, reason)`. The engine must stop a sequence
once `seq.num_tokens >= scheduler.max_seq_len`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cormorant.config import GPU_MAX_NUM_BATCHED_TOKENS, SchedulerConfig
from cormorant.engine.block_manager import BlockManager
from cormorant.engine.policies import FifoQueue, WaitingQueue, waiting_queue
from cormorant.engine.sequence import Sequence, SequenceStatus
from cormorant.engine.types import is_background


@dataclass
class SchedulerOutput:
    """This step's choice, on the live sequences (engine-side only): compute
    `num_new_tokens[i]` tokens of `seqs[i]` from its num_computed_tokens; sample where
    `do_sample` (the chunk reaches the end of the sequence's known tokens)."""

    seqs: list[Sequence]
    num_new_tokens: list[int]
    do_sample: list[bool]
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.seqs)


class CannotScheduleError(ValueError):
    """The request can never run here (empty, longer than the context or the whole cache)."""


class Scheduler:
    """Continuous batching over one BlockManager. Owns the running list and waiting queue."""

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 waiting: WaitingQueue | None = None, *,
                 max_model_len: int | None = None) -> None:
        """max_model_len: the resolved context length; overrides config.max_model_len, which
        may be None ("the model's own"). If both are None only the cache size limits."""
        # None: the builder resolves it by device; a scheduler built without it, the GPU's.
        self.token_budget = (GPU_MAX_NUM_BATCHED_TOKENS if config.max_num_batched_tokens is None
                             else config.max_num_batched_tokens)
        if config.max_num_seqs < 1 or self.token_budget < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")
        self.config = config
        self.max_model_len = max_model_len if max_model_len is not None else config.max_model_len
        self.block_manager = block_manager
        self.running: list[Sequence] = []  # admission order; the last one is the victim
        # The waiting queue's order: config.policy's (engine.policies), unless one is given.
        self.waiting: WaitingQueue = (waiting if waiting is not None
                                      else waiting_queue(config.policy))
        self.background: WaitingQueue = FifoQueue()  # batch jobs: spare capacity only
        # n > 1: req_id -> the sibling whose prompt the others wait for, and those others.
        self._leaders: dict[str, Sequence] = {}
        self._parked: dict[str, list[Sequence]] = {}
        self.num_preemptions = 0  # total over the scheduler's life
        self._num_interactive_preempted = 0  # this step's

    # ---- limits and counters -------------------------------------------------------------

    @property
    def max_seq_len(self) -> int:
        """Longest a sequence may grow (prompt + output): the model's context, or the whole
        cache if that is smaller. The engine stops sequences here with reason "length"."""
        bm = self.block_manager
        cache_len = bm.num_total_blocks * bm.block_size
        return cache_len if self.max_model_len is None else min(self.max_model_len, cache_len)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return (len(self.waiting) + len(self.background)
                + sum(len(p) for p in self._parked.values()))

    @property
    def num_waiting_prompt_tokens(self) -> int:
        """Tokens queued for prefill (a preempted sequence recomputes all of its tokens)."""
        return sum(s.num_tokens for s in self._iter_waiting())

    @property
    def has_unfinished(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    def _iter_waiting(self) -> Iterator[Sequence]:
        yield from self.waiting
        yield from self.background
        for parked in self._parked.values():
            yield from parked

    # ---- admission and removal -----------------------------------------------------------

    def check_prompt(self, seq: Sequence) -> str | None:
        """Why seq can never be scheduled, or None if it can."""
        if seq.num_tokens == 0:
            return "the prompt is empty"
        if self.max_model_len is not None and seq.num_tokens > self.max_model_len:
            return (f"the prompt has {seq.num_tokens} tokens, more than the model's maximum "
                    f"context length of {self.max_model_len}")
        if seq.num_tokens > self.max_seq_len:
            return (f"the prompt has {seq.num_tokens} tokens but the KV cache holds only "
                    f"{self.max_seq_len}")
        return None

    def add(self, seq: Sequence) -> None:
        """Queue seq. Raises CannotScheduleError (a ValueError, message fit for a client) at
        once if it can never fit; seq is then left unqueued and untouched."""
        error = self.check_prompt(seq)
        if error is not None:
            raise CannotScheduleError(error)
        seq.status = SequenceStatus.WAITING
        if seq.req_id in self._leaders:
            self._parked[seq.req_id].append(seq)
            return
        if self._shares_prompt_with_siblings(seq):
            self._leaders[seq.req_id] = seq
            self._parked[seq.req_id] = []
        self._queue_of(seq).push(seq)

    def _queue_of(self, seq: Sequence) -> WaitingQueue:
        return self.background if is_background(seq.priority) else self.waiting

    def _shares_prompt_with_siblings(self, seq: Sequence) -> bool:
        # Parking siblings only pays if the prompt has a full block the cache can serve.
        bm = self.block_manager
        return (seq.sampling_params.n > 1 and bm.enable_prefix_caching
                and (seq.num_prompt_tokens - 1) // bm.block_size >= 1)

    def finish(self, seq: Sequence, finish_reason: str | None = None) -> None:
        """Remove seq from whichever queue holds it and free its blocks now. Idempotent."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif not self.waiting.remove(seq) and not self.background.remove(seq):
            parked = self._parked.get(seq.req_id, [])
            if seq in parked:
                parked.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
        if finish_reason is not None:
            seq.finish_reason = finish_reason
        if self._leaders.get(seq.req_id) is seq:
            self._release_siblings(seq.req_id, keep_leader=True)

    def abort(self, seq: Sequence) -> None:
        self.finish(seq, "abort")

    def _release_siblings(self, req_id: str, keep_leader: bool) -> None:
        """Move parked siblings to the front of the queue (they keep their index order).

        keep_leader: the leader left before its prompt was computed, so the first parked
        sibling takes its place and the rest stay parked behind it.
        """
        del self._leaders[req_id]
        parked = self._parked.pop(req_id)
        if keep_leader and parked:
            new_leader, rest = parked[0], parked[1:]
            self._leaders[req_id] = new_leader
            self._parked[req_id] = rest
            self._queue_of(new_leader).push_front(new_leader)
            return
        for seq in reversed(parked):
            self._queue_of(seq).push_front(seq)

    # ---- the step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's work within max_num_batched_tokens and the free blocks."""
        seqs: list[Sequence] = []
        num_new: list[int] = []
        self._num_interactive_preempted = 0
        preempted_before = self.num_preemptions
        budget = self._schedule_running(seqs, num_new, self.token_budget, background=False)
        # Admitting after a preemption would only thrash: the cache is already short.
        # Preempted batch sequences do not count: they are what gives way.
        if self._num_interactive_preempted == 0:
            budget = self._admit_waiting(self.waiting, seqs, num_new, budget, displace=True)
        budget = self._schedule_running(seqs, num_new, budget, background=True)
        if self.num_preemptions == preempted_before and not self.waiting:
            budget = self._admit_waiting(self.background, seqs, num_new, budget,
                                         displace=False)
        do_sample = [s.num_computed_tokens + n == s.num_tokens for s, n in zip(seqs, num_new)]
        return SchedulerOutput(seqs, num_new, do_sample,
                               num_preempted=self.num_preemptions - preempted_before)

    def _schedule_running(self, seqs: list[Sequence], num_new: list[int], budget: int,
                          background: bool) -> int:
        """Give the running sequences of one class their next chunk, in admission order."""
        i = self._num_interactive_running() if background else 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if is_background(seq.priority) != background:
                break  # interactive ones all come first
            n = min(self._num_remaining(seq), budget)
            scheduled, _ = self._grow_or_preempt(seq, n)
            if not scheduled:
                break  # seq preempted itself: everything after it is gone too
            seqs.append(seq)
            num_new.append(n)
            budget -= n
            i += 1
        return budget

    def _num_interactive_running(self) -> int:
        return next((i for i, s in enumerate(self.running) if is_background(s.priority)),
                    len(self.running))

    def _displace_background(self) -> bool:
        """Preempt the last running background sequence (none is scheduled yet this step)."""
        if not self.running or not is_background(self.running[-1].priority):
            return False
        self._preempt(self.running[-1])
        return True

    def _num_remaining(self, seq: Sequence) -> int:
        # The hook for speculative decoding: a target beyond num_tokens would include drafts.
        remaining = seq.num_tokens - seq.num_computed_tokens
        assert remaining > 0 and seq.num_tokens <= self.max_seq_len, (
            f"seq {seq.seq_id} has nothing to compute or outgrew max_seq_len: the engine "
            "must append each sampled token and stop sequences at max_seq_len")
        return remaining

    def _grow_or_preempt(self, seq: Sequence, num_new_tokens: int) -> tuple[bool, int]:
        """Make room for seq's next chunk by preempting the most recently admitted running
        sequences, seq itself last. Returns (seq keeps running, number preempted)."""
        num_victims = 0
        while not self.block_manager.ensure_slots(seq, num_new_tokens):
            victim = self.running[-1]
            self._preempt(victim)
            num_victims += 1
            if victim is seq:
                return False, num_victims
        return True, num_victims

    def _preempt(self, seq: Sequence) -> None:
        """Recompute preemption: drop the KV, requeue at the front; generated tokens stay in
        seq.token_ids and are recomputed (mostly from the prefix cache) on re-admission."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        if not is_background(seq.priority):
            self._num_interactive_preempted += 1
        self._queue_of(seq).push_front(seq)

    def _admit_waiting(self, queue: WaitingQueue, seqs: list[Sequence], num_new: list[int],
                       budget: int, displace: bool) -> int:
        """Admit from `queue` in its order; displace: running background sequences give up
        their seats and blocks to it."""
        bm = self.block_manager
        while queue and budget > 0:
            if len(self.running) >= self.config.max_num_seqs:
                if displace and self._displace_background():
                    continue
                break
            seq = queue.peek()
            num_cached = bm.num_cached_prefix_tokens(seq)
            n = min(seq.num_tokens - num_cached, budget)
            if not bm.allocate_prompt(seq, n):
                if displace and self._displace_background():
                    continue
                break  # FIFO: nobody overtakes the head for lack of blocks
            queue.pop()
            seq.status = SequenceStatus.RUNNING
            if is_background(seq.priority):
                self.running.append(seq)
            else:
                self.running.insert(self._num_interactive_running(), seq)
            seqs.append(seq)
            num_new.append(n)
            budget -= n
        return budget

    def update_after_step(self, batch: SchedulerOutput) -> None:
        """Advance num_computed_tokens by what the step computed, register newly full blocks
        in the prefix cache and release siblings whose leader finished its prompt.

        Call before finishing any sequence of the batch, so its last blocks get cached.
        Sequences finished or aborted while the step ran are skipped.
        """
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if seq.status is not SequenceStatus.RUNNING:
                continue
            seq.num_computed_tokens += n
            self.block_manager.mark_computed(seq)
            if self._leaders.get(seq.req_id) is seq and seq.is_prefill_done:
                self._release_siblings(seq.req_id, keep_leader=False)

    # ---- invariants (tests) --------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError if queues, statuses or block references are inconsistent."""
        assert len(self.running) <= self.config.max_num_seqs
        assert len(set(self.running)) == len(self.running), "a sequence runs twice"
        classes = [is_background(s.priority) for s in self.running]
        assert classes == sorted(classes), "a background sequence runs ahead of interactive ones"
        for seq in self.running:
            assert seq.status is SequenceStatus.RUNNING
            assert 0 <= seq.num_computed_tokens <= seq.num_tokens <= self.max_seq_len + 1
            assert seq.block_table, f"running seq {seq.seq_id} holds no blocks"
        waiting = list(self._iter_waiting())
        assert len(set(waiting)) == len(waiting), "a sequence waits twice"
        assert not set(waiting) & set(self.running), "a sequence both waits and runs"
        for seq in waiting:
            assert seq.status is SequenceStatus.WAITING
            assert not seq.block_table and seq.num_computed_tokens == 0
        for req_id, leader in self._leaders.items():
            assert leader.req_id == req_id and not leader.is_finished
            assert req_id in self._parked
        self.block_manager.check_invariants(self.running)
