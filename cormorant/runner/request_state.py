"""The runner's own copy of each sequence it runs, kept up to date from each ScheduledBatch.

The engine sends a sequence's full data once (`NewSeq`) and diffs after that (`CachedSeqs`);
`RequestStates.update` applies them and returns the states of the batch's rows, from which
the runner builds every tensor (runner.inputs, runner.sampling_metadata). A token id below
zero is a placeholder for the id the previous launch is still sampling (async scheduling):
the inputs fill it on the device, and the next batch sends its real value.

`BlockTableRows` keeps every live sequence's block table as a row of one persistent numpy
array and copies only the blocks a sequence gained since the last step (runner.inputs
gathers the batch's rows from it).

Imports numpy, the engine's plain types and sampling_params only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cormorant.engine.types import NewSeq, ScheduledBatch
from cormorant.sampling_params import SamplingParams


@dataclass(eq=False)
class RequestState:
    seq_id: int
    index: int  # which of the request's n samples (seeded streams)
    sampling_params: SamplingParams
    token_ids: list[int]  # prompt + generated (+ placeholders)
    num_prompt_tokens: int
    # Grows by extend only and is a new list when rebuilt: runner.inputs.BlockTableRows
    # relies on that to copy only the new ids.
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0

    @classmethod
    def from_new(cls, new: NewSeq) -> RequestState:
        return cls(new.seq_id, new.index, new.sampling_params, list(new.token_ids),
                   new.num_prompt_tokens, list(new.block_ids), new.num_computed_tokens)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class RequestStates:
    """seq_id -> RequestState, for every sequence the engine has sent and not yet finished."""

    def __init__(self) -> None:
        self.states: dict[int, RequestState] = {}

    def __len__(self) -> int:
        return len(self.states)

    def update(self, batch: ScheduledBatch) -> list[RequestState]:
        """Apply the batch (drop finished, take new, apply diffs); the states of its rows,
        in row order."""
        states = self.states
        for seq_id in batch.finished_seq_ids:
            states.pop(seq_id, None)
        for new in batch.new_seqs:
            states[new.seq_id] = RequestState.from_new(new)
        cached = batch.cached
        for seq_id, start, token_ids, block_ids, num_computed in zip(
                cached.seq_ids, cached.token_starts, cached.new_token_ids, cached.new_block_ids,
                cached.num_computed_tokens):
            state = states[seq_id]
            if token_ids or start != len(state.token_ids):
                state.token_ids[start:] = token_ids
            if block_ids:
                state.block_table.extend(block_ids)
            state.num_computed_tokens = num_computed
        return [states[seq_id] for seq_id in batch.seq_ids]


class BlockTableRows:
    """seq_id -> a row of one persistent [capacity, max_blocks] int32 array.

    Relies on the one way a table changes (RequestStates.update): a sequence's `block_table`
    list only grows by `extend`, and is a new list object when the sequence is rebuilt
    (resumed after a preemption). Each entry keeps the list object it copied (so its
    identity cannot be reused) and how many ids it copied; anything else forces a full copy
    of the row."""

    def __init__(self, capacity: int, max_blocks: int) -> None:
        self.table = np.zeros((capacity, max_blocks), dtype=np.int32)
        self._entries: dict[int, list] = {}  # seq_id -> [row, list object, ids copied]
        self._free_rows = list(range(capacity - 1, -1, -1))

    def rows_for(self, seqs: list[RequestState]) -> np.ndarray:
        """The row index of each sequence ([S] int64), with its row brought up to date."""
        entries = self._entries
        rows = []
        for seq in seqs:
            entry = entries.get(seq.seq_id)
            ids = seq.block_table
            if entry is None or entry[1] is not ids or entry[2] != len(ids):
                entry = self._refresh(seq, entry, seqs)
            rows.append(entry[0])
        return np.array(rows, dtype=np.int64)

    def _refresh(self, seq: RequestState, entry: list | None, batch: list[RequestState]
                 ) -> list:
        ids = seq.block_table
        if len(ids) > self.table.shape[1]:
            raise ValueError(f"sequence {seq.seq_id} holds {len(ids)} blocks, more than "
                             f"max_model_len allows ({self.table.shape[1]})")
        if entry is None:
            entry = self._entries[seq.seq_id] = [self._take_row(batch), ids, 0]
        elif entry[1] is not ids or entry[2] > len(ids):  # a new list: copy it whole
            entry[1], entry[2] = ids, 0
        self.table[entry[0], entry[2]:len(ids)] = ids[entry[2]:]
        entry[2] = len(ids)
        return entry

    def release(self, seq_id: int) -> None:
        entry = self._entries.pop(seq_id, None)
        if entry is not None:
            self._free_rows.append(entry[0])

    def _take_row(self, batch: list[RequestState]) -> int:
        if not self._free_rows:
            # Sequences never released (finished ones whose ids have not arrived yet) hold
            # rows: drop everyone not in this batch; they rebuild on their next step.
            keep = {seq.seq_id for seq in batch}
            for seq_id in [s for s in self._entries if s not in keep]:
                self.release(seq_id)
        return self._free_rows.pop()
