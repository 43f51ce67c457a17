"""The plain types that cross the engine's seams (no torch).

frontend -> engine: EngineRequest; scheduler -> runner: ScheduledBatch;
runner -> engine: SampleOutput per sampled sequence; engine -> frontend: EngineOutput.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from cormorant.engine.sequence import Sequence
from cormorant.sampling_params import SamplingParams

# One position's logprobs: the logprob of the chosen token and {token_id: logprob} of the top-k.
TokenLogprobs = tuple[float, dict[int, float]]


@dataclass
class EngineRequest:
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    # Fair queueing (production layer): requests are ordered by (tenant share, priority).
    tenant: str = ""
    priority: int = 0  # lower first, inside the tenant's share
    weight: float = 1.0  # the tenant's share relative to the others
    # Mixed into the prefix-cache block hashes: requests share cached KV blocks only when
    # their salts are equal (tenant isolation; "" for the unsalted namespace).
    cache_salt: str = ""


@dataclass
class ScheduledBatch:
    """One forward pass: for each sequence, compute `num_new_tokens` tokens starting at its
    num_computed_tokens; sample the next token where `do_sample` (the chunk reaches the end of
    the sequence's known tokens)."""

    seqs: list[Sequence]
    num_new_tokens: list[int]
    do_sample: list[bool]
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass
class SampleOutput:
    """What the runner returns for one sequence of a step."""

    token_id: int | None  # None: the chunk did not reach the end of the prompt
    logprobs: TokenLogprobs | None = None
    # For the prompt positions of this chunk: logprobs of each actual next prompt token.
    prompt_logprobs: list[TokenLogprobs] | None = None


@dataclass
class EngineOutput:
    """The news of one step for one sequence."""

    req_id: str
    index: int
    new_token_ids: list[int]
    finish_reason: str | None = None  # stop | length | abort, or an error message's kind
    new_logprobs: list[TokenLogprobs] | None = None
    prompt_logprobs: list[TokenLogprobs] | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    stop_token_id: int | None = None
    first_scheduled_time: float | None = None  # monotonic; queue time = this - arrival
    error: str | None = None  # the request was rejected (e.g. prompt can never fit)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
