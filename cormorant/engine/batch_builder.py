"""BatchBuilder: turns the scheduler's choice into the runner's plain-data ScheduledBatch.

Plain Python, no torch. Imports `cormorant.engine.{sequence, scheduler, types}`.

The runner keeps its own copy of each sequence it runs (runner.request_state), so a
sequence's full data (tokens, sampling settings, block ids) travels once: the first time it
is scheduled, and again when it resumes after a preemption (its blocks were freed). After
that only diffs travel: tokens the runner has not seen, blocks the sequence gained and
num_computed_tokens. A token the runner holds as a placeholder (async scheduling: the id was
still being sampled when the batch was built) is not counted as seen, so the next batch sends
it again with its real value. Sequences the engine finished reach the runner as
`finished_seq_ids` with the next batch.
"""
from __future__ import annotations

from dataclasses import dataclass

from cormorant.engine.scheduler import SchedulerOutput
from cormorant.engine.sequence import Sequence
from cormorant.engine.types import PLACEHOLDER_TOKEN_ID, CachedSeqs, NewSeq, ScheduledBatch


@dataclass
class _Sent:
    """What the runner holds of one sequence."""

    num_preemptions: int  # a preemption since then means the runner's blocks are stale
    num_blocks: int
    num_known_tokens: int  # leading tokens the runner holds with their real ids


class BatchBuilder:
    """One per engine: remembers what its runner has been sent."""

    def __init__(self) -> None:
        self._sent: dict[int, _Sent] = {}  # seq_id -> what the runner holds
        self._finished: list[int] = []  # seq ids to drop, sent with the next batch

    def build(self, scheduled: SchedulerOutput) -> ScheduledBatch:
        """The plain batch of the scheduler's choice, rows in the same order."""
        seqs = scheduled.seqs
        batch = ScheduledBatch([seq.seq_id for seq in seqs], list(scheduled.num_new_tokens),
                               list(scheduled.do_sample), finished_seq_ids=self._finished,
                               num_preempted=scheduled.num_preempted)
        self._finished = []
        for seq in seqs:
            sent = self._sent.get(seq.seq_id)
            if sent is None or sent.num_preemptions != seq.num_preemptions:
                batch.new_seqs.append(self._new(seq))
            else:
                self._diff(seq, sent, batch.cached)
        return batch

    def finish(self, seq_id: int) -> None:
        """The sequence is done: the runner drops it with the next batch."""
        if self._sent.pop(seq_id, None) is not None:
            self._finished.append(seq_id)

    def _new(self, seq: Sequence) -> NewSeq:
        self._sent[seq.seq_id] = _Sent(seq.num_preemptions, len(seq.block_table),
                                       _num_known(seq.token_ids))
        return NewSeq(seq.seq_id, seq.index, list(seq.token_ids), seq.num_prompt_tokens,
                      seq.sampling_params, list(seq.block_table), seq.num_computed_tokens)

    @staticmethod
    def _diff(seq: Sequence, sent: _Sent, cached: CachedSeqs) -> None:
        cached.seq_ids.append(seq.seq_id)
        cached.token_starts.append(sent.num_known_tokens)
        cached.new_token_ids.append(seq.token_ids[sent.num_known_tokens:])
        cached.new_block_ids.append(seq.block_table[sent.num_blocks:])
        cached.num_computed_tokens.append(seq.num_computed_tokens)
        sent.num_blocks = len(seq.block_table)
        sent.num_known_tokens = _num_known(seq.token_ids)


def _num_known(token_ids: list[int]) -> int:
    """Length of token_ids without its trailing placeholders."""
    n = len(token_ids)
    while n and token_ids[n - 1] == PLACEHOLDER_TOKEN_ID:
        n -= 1
    return n
