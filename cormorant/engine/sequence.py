"""Sequence: all per-sample engine state in one object. Plain Python, no torch.

A request with n > 1 becomes n sequences sharing one req_id (index 0..n-1).
"""
from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from cormorant.sampling_params import SamplingParams

_seq_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    req_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    index: int = 0  # which of the request's n samples
    arrival_time: float = field(default_factory=time.monotonic)
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    token_ids: list[int] = field(init=False)  # prompt + generated
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = 0  # of the prompt, served by the prefix cache at admission
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None  # stop | length | abort
    num_preemptions: int = 0
    # Set by the engine for the first step that scheduled this sequence (queue time, TTFT).
    first_scheduled_time: float | None = None
    # Fair queueing (engine.policies): whose share this sequence draws on, its rank inside
    # that share (lower first) and the share's weight. Copied from the EngineRequest.
    tenant: str = ""
    priority: int = 0
    weight: float = 1.0
    # The prefix-cache namespace (block_manager.salt_root_hash); from the EngineRequest.
    cache_salt: str = ""
    # Block manager bookkeeping: chained hashes of the full blocks of token_ids (memoised,
    # valid across preemptions since tokens never change) and how many leading blocks of
    # block_table have already been offered to the prefix cache.
    block_hashes: list[int] = field(default_factory=list)
    num_hashed_blocks: int = 0
    # Constrained decoding: this sample's grammar matcher (engine.structured), None if free.
    grammar: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.prompt_token_ids = list(self.prompt_token_ids)
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def is_prefill_done(self) -> bool:
        return self.num_computed_tokens >= self.num_prompt_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
