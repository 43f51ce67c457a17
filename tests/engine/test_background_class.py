"""The background class (batch jobs) in the scheduler: it fills spare capacity only, and
interactive requests' time to first token, counted in engine steps, barely moves with a
large batch running (issue #17: p99 within 1.2x). Driven by the fake engine (no model)."""
from __future__ import annotations

import random

from cormorant.engine.sequence import SequenceStatus
from cormorant.engine.types import BATCH_PRIORITY


def _interactive_ttfts(engine, make_seq, batch_priority: int | None, steps: int = 400
                       ) -> tuple[list[int], int]:
    """TTFT in steps of an interactive stream (one request every 5 steps, random lengths),
    with 300 long batch requests queued at step 0 (None: none); and how many batch requests
    finished."""
    rng = random.Random(0)
    batch = []
    if batch_priority is not None:
        for i in range(300):
            seq = make_seq([rng.randrange(1, 30_000) for _ in range(60)], max_tokens=40)
            seq.priority = batch_priority
            batch.append(seq)
        engine.add(*batch)
    arrivals: dict = {}
    ttft: dict = {}
    for step in range(steps):
        if step % 5 == 0 and step < steps - 100:
            prompt = [rng.randrange(1, 30_000) for _ in range(rng.randrange(20, 160))]
            seq = make_seq(prompt, max_tokens=rng.randrange(4, 16))
            engine.add(seq)
            arrivals[seq] = step
        engine.step()
        engine.scheduler.check_invariants()
        for seq, start in arrivals.items():
            if seq not in ttft and seq.num_output_tokens > 0:
                ttft[seq] = step - start + 1
    # One that never started counts with the steps it waited (a lower bound).
    waits = [ttft.get(seq, steps - start + 1) for seq, start in arrivals.items()]
    return sorted(waits), sum(s.status is SequenceStatus.FINISHED for s in batch)


def _p99(values: list[int]) -> float:
    return values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]


def test_interactive_ttft_in_steps_holds_with_a_batch_running(fake_engine, make_seq):
    def engine():
        return fake_engine(num_blocks=96, block_size=16, max_num_batched_tokens=48,
                           max_num_seqs=16)

    alone, _ = _interactive_ttfts(engine(), make_seq, None)
    assert max(alone) < 20  # every one started, soon
    shared, batch_done = _interactive_ttfts(engine(), make_seq, BATCH_PRIORITY)
    print(f"interactive TTFT p99 in steps: {_p99(alone)} alone, {_p99(shared)} beside a "
          f"batch ({batch_done} of 300 batch requests finished)")
    assert _p99(shared) <= 1.2 * _p99(alone)
    assert sum(shared) <= 1.2 * sum(alone)  # the mean too, not only the tail
    assert batch_done >= 50  # the batch did use the spare capacity
    # And the test has teeth: the same batch at interactive priority hurts TTFT badly.
    unclassed, _ = _interactive_ttfts(engine(), make_seq, 0)
    assert _p99(unclassed) > 3 * _p99(alone)


def test_a_waiting_interactive_request_takes_a_batch_seat_within_one_step(fake_engine,
                                                                          make_seq):
    engine = fake_engine(num_blocks=64, block_size=16, max_num_batched_tokens=256,
                         max_num_seqs=4)
    batch = [make_seq(list(range(k, k + 20)), max_tokens=100) for k in range(0, 400, 50)]
    for seq in batch:
        seq.priority = BATCH_PRIORITY
    engine.add(*batch)
    engine.step()
    assert len(engine.scheduler.running) == 4  # the batch fills every seat
    interactive = make_seq(list(range(9000, 9030)), max_tokens=3)
    engine.add(interactive)
    out = engine.step()
    assert out.seqs[0] is interactive and out.num_preempted == 1
    assert engine.scheduler.running[0] is interactive  # ahead of every batch sequence
    preempted = [s for s in batch if s.status is SequenceStatus.WAITING and s.num_preemptions]
    assert len(preempted) == 1 and engine.scheduler.background.peek() is preempted[0]
    engine.run()
    assert all(s.output_token_ids for s in batch) and interactive.num_output_tokens == 3


def test_batch_sequences_wait_while_interactive_ones_do(fake_engine, make_seq):
    engine = fake_engine(num_blocks=64, block_size=16, max_num_batched_tokens=32,
                         max_num_seqs=8)
    queued = make_seq(list(range(100, 110)), max_tokens=2)
    queued.priority = BATCH_PRIORITY
    engine.add(queued)
    hogs = [make_seq(list(range(k, k + 40)), max_tokens=2) for k in (0, 1000)]
    engine.add(*hogs)
    while not all(h.is_finished for h in hogs):
        engine.step()
        if any(h.status is SequenceStatus.WAITING for h in hogs):
            assert queued.status is SequenceStatus.WAITING  # never ahead of interactive work
    engine.run()
    assert queued.num_output_tokens == 2
