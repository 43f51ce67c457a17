"""The runner's own copy of each sequence it runs, kept up to date from each ScheduledBatch.

The engine sends a sequence's full data once (`NewSeq`) and diffs after that (`CachedSeqs`);
`RequestStates.update` applies them and returns the states of the batch's rows, from which
the runner builds every tensor (runner.inputs, runner.sampling_metadata). A token id below
zero is a placeholder for the id the previous launch is still sampling (async scheduling):
the inputs fill it on the device, and the next batch sends its real value.

Imports the engine's plain types and sampling_params only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
