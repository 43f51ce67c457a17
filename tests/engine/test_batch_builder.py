"""The plain-data ScheduledBatch: it survives msgpack, and a runner that sees nothing but the
packed bytes keeps a copy of every sequence equal to the engine's, step after step, through
chunked prefill, prefix-cache hits, preemptions (full data again), async placeholders and
finishes (dropped with the next batch)."""
from __future__ import annotations

import msgpack
import numpy as np

from cormorant.engine.batch_builder import BatchBuilder
from cormorant.engine.scheduler import SchedulerOutput
from cormorant.engine.sequence import Sequence
from cormorant.engine.types import PLACEHOLDER_TOKEN_ID, ScheduledBatch
from cormorant.runner.request_state import RequestStates
from cormorant.sampling_params import SamplingParams


def over_the_wire(batch: ScheduledBatch) -> ScheduledBatch:
    data = msgpack.packb(batch.to_wire())
    return ScheduledBatch.from_wire(msgpack.unpackb(data, strict_map_key=False))


def test_a_batch_round_trips_through_msgpack():
    params = SamplingParams(n=2, temperature=0.7, top_k=20, seed=3, logprobs=2,
                            logit_bias={5: -1.5, 9: 2.0}, stop=["\n\n"], stop_token_ids=[7],
                            max_tokens=None)
    seqs = [Sequence("a", [1, 2, 3, 4, 5], params, index=i) for i in range(2)]
    seqs.append(Sequence("b", [9, 8], SamplingParams(temperature=0.0, prompt_logprobs=1)))
    for seq, blocks in zip(seqs, ([0, 1], [0, 2], [3])):
        seq.block_table = blocks
    builder = BatchBuilder()
    first = builder.build(SchedulerOutput(seqs, [5, 1, 2], [True, True, True]))
    for seq, n in zip(seqs, [5, 1, 2]):
        seq.num_computed_tokens += n
        seq.append_token(40 + n)
    seqs[0].block_table.append(6)
    builder.finish(seqs[2].seq_id)
    second = builder.build(SchedulerOutput(seqs[:2], [1, 1], [True, False],
                                           num_preempted=1))
    assert len(first.new_seqs) == 3 and not first.cached.seq_ids
    assert second.cached.new_block_ids == [[6], []]
    assert second.finished_seq_ids == [seqs[2].seq_id]
    for batch in (first, second):
        back = over_the_wire(batch)
        assert back == batch
        assert [type(s.sampling_params) for s in back.new_seqs] == [SamplingParams] * len(
            batch.new_seqs)
    assert over_the_wire(first).new_seqs[0].sampling_params.logit_bias == {5: -1.5, 9: 2.0}
    # grammar masks travel as bytes, also when the backend hands over a view of its array
    words = np.array([[0x7FFF0001, -2], [3, 4]], dtype="<i4")
    second.mask_rows, second.mask_bits = [0, 1], memoryview(words).cast("B")
    back = over_the_wire(second)
    assert back.mask_rows == [0, 1] and back.mask_bits == words.tobytes()


def _check_mirror(states: RequestStates, batch: ScheduledBatch,
                  scheduled: SchedulerOutput) -> None:
    rows = states.update(over_the_wire(batch))
    for state, seq in zip(rows, scheduled.seqs):
        assert state.seq_id == seq.seq_id
        assert state.token_ids == seq.token_ids
        assert state.prompt_token_ids == seq.prompt_token_ids
        assert state.block_table == seq.block_table
        assert state.num_computed_tokens == seq.num_computed_tokens
        assert state.sampling_params == seq.sampling_params and state.index == seq.index


def test_runner_state_mirrors_the_engine_through_preemption_and_finish(fake_engine,
                                                                       make_seqs):
    engine = fake_engine(num_blocks=14, block_size=4, max_num_batched_tokens=16)
    builder, states = BatchBuilder(), RequestStates()
    shared = list(range(100, 112))
    for k in range(6):  # shared prefixes (cache hits), n > 1, long prompts (chunks)
        engine.add(*make_seqs(shared[:4 + 2 * k] + [k] * (3 + 5 * k), n=1 + k % 2,
                              max_tokens=5 + k))
    forward = engine.forward
    new_counts, num_done = [], 0

    def forward_and_check(scheduled: SchedulerOutput) -> None:
        batch = builder.build(scheduled)
        new_counts.append(len(batch.new_seqs))
        _check_mirror(states, batch, scheduled)
        assert not set(states.states) & {s.seq_id for s in engine.finished}  # all dropped
        forward(scheduled)
    engine.forward = forward_and_check
    while engine.scheduler.has_unfinished:
        engine.step()
        for seq in engine.finished[num_done:]:
            builder.finish(seq.seq_id)
        num_done = len(engine.finished)
    assert engine.scheduler.num_preemptions > 0  # preempted sequences came back whole
    assert sum(new_counts) == 9 + engine.scheduler.num_preemptions
    # The finished sequences of the last step leave with the next batch.
    last = builder.build(SchedulerOutput([], [], []))
    states.update(over_the_wire(last))
    assert len(states) == 0 and last.finished_seq_ids


def test_placeholders_are_sent_again_with_their_real_ids():
    seq = Sequence("p", [1, 2, 3], SamplingParams(temperature=0.0))
    seq.block_table = [4]
    builder, states = BatchBuilder(), RequestStates()

    def step(num_new: int) -> ScheduledBatch:
        scheduled = SchedulerOutput([seq], [num_new], [True])
        batch = builder.build(scheduled)
        _check_mirror(states, batch, scheduled)
        seq.num_computed_tokens += num_new
        seq.append_token(PLACEHOLDER_TOKEN_ID)  # async: the id is still being sampled
        return batch

    step(3)
    second = step(1)  # runs on the placeholder; the device fills its input id
    assert second.cached.new_token_ids == [[PLACEHOLDER_TOKEN_ID]]
    seq.token_ids[-2:] = [11, PLACEHOLDER_TOKEN_ID]  # the first id arrives late
    third = step(1)
    assert (third.cached.token_starts, third.cached.new_token_ids) == (
        [3], [[11, PLACEHOLDER_TOKEN_ID]])
    seq.token_ids[-2:] = [12, 13]  # penalties: the engine collected before building
    fourth = builder.build(SchedulerOutput([seq], [1], [True]))
    states.update(fourth)
    assert states.states[seq.seq_id].token_ids == [1, 2, 3, 11, 12, 13]
