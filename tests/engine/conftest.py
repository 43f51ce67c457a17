"""Helpers for the block manager and scheduler tests: real Sequences, a fake engine loop.

The fake engine plays the runner with a fake KV cache: each slot records the token whose
"KV" was written there, so a test can check that every position a sequence attends to holds
its own token (prefix-cache reuse and block growth are right) and that no step writes into a
block another sequence shares. No torch: these tests run alone.
"""
from __future__ import annotations

import itertools

import pytest

from cormorant.config import SchedulerConfig
from cormorant.engine.block_manager import BlockManager
from cormorant.engine.scheduler import Scheduler, SchedulerOutput
from cormorant.engine.sequence import Sequence, SequenceStatus
from cormorant.engine.types import is_background
from cormorant.sampling_params import SamplingParams

_req_ids = itertools.count()


def make_seqs(prompt: list[int], n: int = 1, max_tokens: int = 4,
              req_id: str | None = None) -> list[Sequence]:
    """The n sibling sequences of one request, as the engine builds them."""
    req_id = req_id if req_id is not None else f"req-{next(_req_ids)}"
    params = SamplingParams(n=n, max_tokens=max_tokens)
    return [Sequence(req_id, prompt, params, index=i) for i in range(n)]


def make_seq(prompt: list[int], max_tokens: int = 4) -> Sequence:
    return make_seqs(prompt, 1, max_tokens)[0]


class FakeEngine:
    """schedule -> fake forward -> update_after_step -> append a token -> stop -> finish."""

    def __init__(self, num_blocks: int, block_size: int, max_num_batched_tokens: int = 64,
                 max_num_seqs: int = 8, max_model_len: int | None = 1 << 20,
                 enable_prefix_caching: bool = True) -> None:
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching)
        config = SchedulerConfig(max_num_seqs=max_num_seqs,
                                 max_num_batched_tokens=max_num_batched_tokens,
                                 max_model_len=max_model_len)
        self.scheduler = Scheduler(config, self.bm)
        self.kv: list[list[int | None]] = [[None] * block_size for _ in range(num_blocks)]
        self.finished: list[Sequence] = []

    def add(self, *seqs: Sequence) -> None:
        for seq in seqs:
            self.scheduler.add(seq)

    def step(self) -> SchedulerOutput:
        was_running = set(self.scheduler.running)
        batch = self.scheduler.schedule()
        self.check_batch(batch)
        # The cache is short: no admissions in the same step, unless only background (batch)
        # sequences were preempted: they give way to interactive ones.
        preempted = [s for s in was_running if s.status is SequenceStatus.WAITING]
        if any(not is_background(s.priority) for s in preempted):
            assert was_running.issuperset(batch.seqs)
        self.forward(batch)
        self.scheduler.update_after_step(batch)
        for seq, do_sample in zip(batch.seqs, batch.do_sample):
            if do_sample:
                seq.append_token(10_000 + seq.num_output_tokens)
                if (seq.num_output_tokens >= seq.sampling_params.max_tokens
                        or seq.num_tokens >= self.scheduler.max_seq_len):
                    self.scheduler.finish(seq, "length")
                    self.finished.append(seq)
        return batch

    def run(self, max_steps: int = 10_000) -> int:
        """Step until nothing is left; returns the number of steps."""
        for num_steps in range(max_steps):
            if not self.scheduler.has_unfinished:
                return num_steps
            self.step()
            self.scheduler.check_invariants()
        raise AssertionError(f"not done after {max_steps} steps")

    def check_batch(self, batch: SchedulerOutput) -> None:
        config, bs = self.scheduler.config, self.bm.block_size
        assert batch.num_tokens <= config.max_num_batched_tokens
        assert len(batch) <= config.max_num_seqs
        assert len(set(batch.seqs)) == len(batch.seqs)
        for seq, n, do_sample in zip(batch.seqs, batch.num_new_tokens, batch.do_sample):
            assert seq.status is SequenceStatus.RUNNING and n >= 1
            end = seq.num_computed_tokens + n
            assert end <= seq.num_tokens and end <= self.scheduler.max_seq_len
            assert len(seq.block_table) * bs >= end, "scheduled tokens without slots"
            assert do_sample == (end == seq.num_tokens)

    def forward(self, batch: SchedulerOutput) -> None:
        """Write each scheduled token's fake KV, then check what each sequence would read."""
        bs = self.bm.block_size
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            for pos in range(seq.num_computed_tokens, seq.num_computed_tokens + n):
                block_id = seq.block_table[pos // bs]
                assert self.bm.ref_count(block_id) == 1, "wrote into a shared block"
                self.kv[block_id][pos % bs] = seq.token_ids[pos]
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            for pos in range(seq.num_computed_tokens + n):
                read = self.kv[seq.block_table[pos // bs]][pos % bs]
                assert read == seq.token_ids[pos], f"seq {seq.seq_id} reads a stranger's KV"


# Helpers reach the test modules as fixtures: `from conftest import ...` would depend on
# which of the suite's several conftest modules was imported last.


@pytest.fixture
def fake_engine():
    """A factory: fake_engine(num_blocks, block_size, **scheduler_settings)."""
    return FakeEngine


@pytest.fixture(name="make_seq")
def make_seq_fixture():
    return make_seq


@pytest.fixture(name="make_seqs")
def make_seqs_fixture():
    return make_seqs
