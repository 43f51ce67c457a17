"""Scheduler over a real BlockManager, driven by the fake engine of conftest.py (no model).

Covers chunked prefill beside decodes, prefix-cache admission, preemption, rejection, aborts,
n > 1 siblings sharing the prompt's blocks, the waiting-queue hook, and a property test that
random add / step / abort / finish sequences (interactive and background requests mixed)
never leak or double-free and always finish.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cormorant.config import SchedulerConfig
from cormorant.engine.block_manager import BlockManager
from cormorant.engine.scheduler import CannotScheduleError, Scheduler
from cormorant.engine.sequence import SequenceStatus
from cormorant.engine.types import BATCH_PRIORITY


def test_chunked_prefill_runs_beside_decodes(fake_engine, make_seq):
    engine = fake_engine(num_blocks=200, block_size=16, max_num_batched_tokens=64)
    a, b = make_seq(list(range(10)), max_tokens=100), make_seq(list(range(20, 30)), 100)
    engine.add(a, b)
    assert engine.step().num_new_tokens == [10, 10]
    long = make_seq(list(range(1000, 2000)), max_tokens=2)
    engine.add(long)
    chunks = []
    while not long.is_prefill_done:
        batch = engine.step()
        assert batch.seqs == [a, b, long] and batch.num_new_tokens[:2] == [1, 1]
        assert batch.do_sample == [True, True, long.is_prefill_done]
        chunks.append(batch.num_new_tokens[2])
    assert sum(chunks) == 1000 and len(chunks) == 17 and max(chunks) == 62
    engine.run()
    assert long.output_token_ids == [10_000, 10_001]


def test_admission_reuses_the_prefix_cache(fake_engine, make_seq):
    engine = fake_engine(num_blocks=32, block_size=16)
    shared = list(range(32))
    engine.add(make_seq(shared + [1, 2, 3], max_tokens=2))
    engine.run()
    second = make_seq(shared + [7, 8], max_tokens=2)
    engine.add(second)
    batch = engine.step()  # the fake forward also checks the reused blocks hold its tokens
    assert batch.num_new_tokens == [2] and batch.do_sample == [True]
    assert second.num_cached_tokens == 32
    engine.run()
    assert engine.bm.num_prefix_hit_tokens == 32


def test_preemption_takes_the_most_recently_admitted(fake_engine, make_seq):
    engine = fake_engine(num_blocks=6, block_size=4)
    a, b, c = (make_seq(list(range(k, k + 7)), max_tokens=6) for k in (0, 100, 200))
    engine.add(a, b, c)
    engine.step()  # three 7-token prefills: all 6 blocks in use
    engine.step()  # the 8th slot still fits everyone's second block
    batch = engine.step()  # the 9th slot needs a 3rd block each: c makes room
    assert batch.seqs == [a, b] and batch.num_preempted == 1
    assert c.status is SequenceStatus.WAITING and c.num_preemptions == 1
    assert c.num_computed_tokens == 0 and c.block_table == []
    assert c.output_token_ids == [10_000, 10_001]  # kept: recomputed with the prompt
    assert engine.scheduler.waiting.peek() is c and engine.scheduler.num_preemptions == 1
    engine.scheduler.check_invariants()
    engine.run()
    assert engine.finished[-1] is c and c.num_output_tokens == 6


def test_a_sequence_that_cannot_grow_preempts_itself_when_last(fake_engine, make_seq):
    engine = fake_engine(num_blocks=4, block_size=4)
    a, b = make_seq(list(range(6)), max_tokens=10), make_seq(list(range(50, 57)), 10)
    engine.add(a, b)
    engine.step()
    engine.step()
    batch = engine.step()  # b needs a 3rd block, a (older) needs none: b yields its own
    assert batch.seqs == [a] and batch.num_preempted == 1 and b.num_preemptions == 1
    engine.run()
    assert a.num_output_tokens == 10 and b.num_output_tokens == 9  # b stops at 16 tokens
    assert engine.bm.num_free_blocks == 4


def test_prompts_that_can_never_fit_are_rejected_at_once(make_seq):
    bm = BlockManager(num_blocks=4, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_model_len=32), bm)
    for prompt, message in ((list(range(33)), "maximum context length"),
                            (list(range(17)), "KV cache holds only 16"),
                            ([], "empty")):
        seq = make_seq(prompt)
        with pytest.raises(CannotScheduleError, match=message):
            scheduler.add(seq)
        assert seq.status is SequenceStatus.WAITING and not scheduler.has_unfinished
    scheduler.add(make_seq(list(range(16))))  # exactly the whole cache is fine
    assert scheduler.num_waiting == 1 and scheduler.schedule().num_new_tokens == [16]


def test_max_model_len_none_means_the_cache_limits(make_seq):
    bm = BlockManager(num_blocks=4, block_size=4)
    assert Scheduler(SchedulerConfig(max_model_len=None), bm).max_seq_len == 16
    assert Scheduler(SchedulerConfig(max_model_len=None), bm, max_model_len=8).max_seq_len == 8


def test_generation_stops_at_max_model_len(fake_engine, make_seq):
    engine = fake_engine(num_blocks=16, block_size=4, max_model_len=12)
    seq = make_seq(list(range(10)), max_tokens=100)
    engine.add(seq)
    engine.run()  # check_batch asserts nothing is scheduled past position 12
    assert seq.num_tokens == 12


def test_abort_frees_blocks_in_the_same_step(fake_engine, make_seq):
    engine = fake_engine(num_blocks=16, block_size=4, max_num_seqs=2)
    a, b, c = (make_seq(list(range(k, k + 9)), max_tokens=8) for k in (0, 100, 200))
    engine.add(a, b, c)
    engine.step()
    free_before = engine.bm.num_free_blocks
    engine.scheduler.abort(a)
    assert engine.bm.num_free_blocks == free_before + 3 and a.block_table == []
    assert a.status is SequenceStatus.FINISHED and a.finish_reason == "abort"
    engine.scheduler.abort(c)  # still waiting
    assert engine.scheduler.num_waiting == 0
    batch = engine.scheduler.schedule()
    assert batch.seqs == [b]
    engine.scheduler.abort(b)  # aborted while its step runs: the update skips it
    engine.scheduler.update_after_step(batch)
    assert b.num_computed_tokens == 9 and engine.bm.num_free_blocks == 16
    engine.scheduler.check_invariants()


def test_siblings_share_the_prompt_blocks(fake_engine, make_seqs):
    engine = fake_engine(num_blocks=16, block_size=4)
    seqs = make_seqs(list(range(10)), n=3, max_tokens=3)
    engine.add(*seqs)
    first = engine.step()
    assert first.seqs == [seqs[0]] and engine.scheduler.num_waiting == 2
    second = engine.step()  # released siblings compute only the last partial block
    assert second.seqs == seqs and second.num_new_tokens == [1, 2, 2]
    leader_blocks = seqs[0].block_table[:2]
    for sibling in seqs[1:]:
        assert sibling.num_cached_tokens == 8 and sibling.block_table[:2] == leader_blocks
    assert [engine.bm.ref_count(b) for b in leader_blocks] == [3, 3]
    engine.scheduler.check_invariants()
    engine.run()
    assert all(s.num_output_tokens == 3 for s in seqs) and engine.bm.num_free_blocks == 16


def test_a_new_leader_steps_in_when_the_first_sibling_is_aborted(fake_engine, make_seqs):
    engine = fake_engine(num_blocks=16, block_size=4, max_num_batched_tokens=4)
    seqs = make_seqs(list(range(10)), n=3, max_tokens=2)
    engine.add(*seqs)
    engine.step()  # the leader's first chunk
    engine.scheduler.abort(seqs[0])
    assert engine.scheduler.num_waiting == 2 and engine.step().seqs == [seqs[1]]
    engine.run()
    assert seqs[2].num_cached_tokens == 8 and seqs[2].num_output_tokens == 2


def test_short_prompt_siblings_are_not_held_back(fake_engine, make_seqs):
    engine = fake_engine(num_blocks=16, block_size=4)
    seqs = make_seqs([1, 2, 3, 4], n=3)  # no full block the cache could serve
    engine.add(*seqs)
    assert engine.step().seqs == seqs


def test_counters_and_max_num_seqs(fake_engine, make_seq):
    engine = fake_engine(num_blocks=16, block_size=4, max_num_seqs=1)
    engine.add(*(make_seq(list(range(n))) for n in (5, 7, 9)))
    assert engine.scheduler.num_waiting_prompt_tokens == 21
    assert len(engine.step()) == 1
    assert engine.scheduler.num_running == 1 and engine.scheduler.num_waiting == 2
    assert engine.scheduler.num_waiting_prompt_tokens == 16


def test_a_custom_waiting_queue_decides_admission_order(make_seq):
    class LifoQueue(list):  # the WaitingQueue protocol, newest first
        def push(self, seq): self.append(seq)
        def push_front(self, seq): self.insert(len(self), seq)
        def peek(self): return self[-1]
        def remove(self, seq): return seq in self and list.remove(self, seq) is None

    scheduler = Scheduler(SchedulerConfig(max_num_seqs=2), BlockManager(16, 4), LifoQueue())
    seqs = [make_seq(list(range(k, k + 3))) for k in (0, 10, 20)]
    for seq in seqs:
        scheduler.add(seq)
    assert scheduler.schedule().seqs == [seqs[2], seqs[1]]
    scheduler.abort(seqs[0])
    assert scheduler.num_waiting == 0


# ---- property test -------------------------------------------------------------------------

# Prompts are a prefix of one of a few base prompts plus a short random tail, so requests
# often share prefixes: that is what exercises cache hits, evictions and stale entries.
_BASES = [[(7 * k + 3 * i) % 5 for i in range(24)] for k in range(3)]
_prompts = st.builds(lambda base, length, tail: _BASES[base][:length] + tail,
                     st.integers(0, 2), st.integers(0, 16), st.lists(st.integers(5, 6), max_size=3))
# The last flag: a background (batch) request.
_add = st.tuples(st.just("add"), _prompts, st.integers(1, 3), st.integers(1, 8), st.booleans())
_step = st.tuples(st.just("step"))
_ops = st.lists(st.one_of(
    _add, _add, _step, _step, _step,
    st.tuples(st.just("abort"), st.integers(0, 1000)),
    st.tuples(st.just("finish"), st.integers(0, 1000)),
), min_size=8, max_size=60)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, cache_tokens=st.integers(6, 48), block_size=st.integers(1, 4),
       budget=st.integers(1, 16), max_num_seqs=st.integers(1, 4),
       max_model_len=st.integers(6, 40), caching=st.booleans(),
       abort_rest=st.sampled_from([False, False, False, True]))
def test_random_operations_never_leak_and_always_finish(
        fake_engine, make_seqs, ops, cache_tokens, block_size, budget, max_num_seqs,
        max_model_len, caching, abort_rest):
    num_blocks = -(-cache_tokens // block_size)  # small caches: preemption and eviction
    engine = fake_engine(num_blocks, block_size, max_num_batched_tokens=budget,
                         max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                         enable_prefix_caching=caching)
    scheduler, live = engine.scheduler, []
    for op in ops:
        if op[0] == "add":
            seqs = make_seqs(op[1], n=op[2], max_tokens=op[3])
            for seq in seqs:
                seq.priority = BATCH_PRIORITY if op[4] else 0
            try:
                engine.add(*seqs)
                live.extend(seqs)
            except CannotScheduleError:
                assert not op[1] or len(op[1]) > scheduler.max_seq_len
        elif op[0] == "step":
            engine.step()
        else:
            pending = [s for s in live if not s.is_finished]
            if op[0] == "finish":  # the engine stops a running seq (stop string, EOS)
                pending = [s for s in pending if s.status is SequenceStatus.RUNNING]
            if pending:
                scheduler.finish(pending[op[1] % len(pending)], op[0])
        scheduler.check_invariants()
    if abort_rest:
        for seq in live:
            scheduler.abort(seq)
    else:
        engine.run(max_steps=20_000)  # liveness: whatever was not aborted finishes
        for seq in engine.finished:
            assert (seq.num_output_tokens == seq.sampling_params.max_tokens
                    or seq.num_tokens >= scheduler.max_seq_len)
    assert all(s.is_finished for s in live) and not scheduler.has_unfinished
    scheduler.check_invariants()
    assert engine.bm.num_free_blocks == num_blocks
