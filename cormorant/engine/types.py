"""The plain types that cross the engine's seams (no torch).

frontend -> engine: EngineRequest; engine -> runner: ScheduledBatch (plain data: new
sequences once, then diffs; engine.batch_builder makes it, runner.request_state reads it);
runner -> engine: SampleOutput per sampled sequence; engine -> frontend: EngineOutput.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from cormorant.sampling_params import SamplingParams, StructuredOutputs

# Stands for a token the in-flight step is still sampling (async scheduling, engine.core).
PLACEHOLDER_TOKEN_ID = -1

# The background class (batch jobs): an EngineRequest priority at or above this fills only
# capacity that interactive requests leave spare and gives way to them (engine.scheduler).
# Above any x-request-priority a client may send (gateway.engine_admission.MAX_PRIORITY).
BATCH_PRIORITY = 1 << 30


def is_background(priority: int) -> bool:
    return priority >= BATCH_PRIORITY


# One position's logprobs: the logprob of the chosen token and {token_id: logprob} of the top-k.
TokenLogprobs = tuple[float, dict[int, float]]


# Packed bitmask rows as bytes, or a byte view of the grammar backend's array (no copy).
MaskBits = bytes | memoryview


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
class NewSeq:
    """A sequence the runner has not seen, or must rebuild (resumed after preemption):
    everything it needs, once."""

    seq_id: int
    index: int  # which of the request's n samples (seeded streams)
    token_ids: list[int]  # prompt + generated so far (a placeholder may end it)
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int


@dataclass
class CachedSeqs:
    """Sequences the runner already holds: only what changed since they last ran, one list
    per field (vLLM v1's CachedRequestData)."""

    seq_ids: list[int] = field(default_factory=list)
    # new_token_ids[i] replaces the runner's tokens from token_starts[i] on: tokens it has
    # not seen, and again any placeholder it holds (async scheduling) now that it is known.
    token_starts: list[int] = field(default_factory=list)
    new_token_ids: list[list[int]] = field(default_factory=list)
    new_block_ids: list[list[int]] = field(default_factory=list)  # appended to the table
    num_computed_tokens: list[int] = field(default_factory=list)


@dataclass
class ScheduledBatch:
    """One forward pass as plain data (msgpack-able, for tensor-parallel ranks): for the
    sequence of row i (`seq_ids[i]`), compute `num_new_tokens[i]` tokens from its
    num_computed_tokens; sample the next token where `do_sample` (the chunk reaches the end
    of its known tokens). The runner first drops `finished_seq_ids`, then takes `new_seqs`
    whole and applies `cached` as diffs to the state it keeps per sequence."""

    seq_ids: list[int]
    num_new_tokens: list[int]
    do_sample: list[bool]
    new_seqs: list[NewSeq] = field(default_factory=list)
    cached: CachedSeqs = field(default_factory=CachedSeqs)
    finished_seq_ids: list[int] = field(default_factory=list)
    num_preempted: int = 0
    # Constrained decoding (engine.structured): the batch rows whose sampling is masked and
    # their bitmasks, [len(mask_rows), ceil(vocab / 32)] int32 little-endian, bit t of a row
    # set when token t is allowed. Empty for a batch without constrained rows.
    mask_rows: list[int] = field(default_factory=list)
    mask_bits: MaskBits = b""

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.seq_ids)

    def to_wire(self) -> dict:
        """Nested dicts and lists of ints, floats, strings and bools (msgpack, JSON); the
        mask bits as bytes."""
        data = asdict(replace(self, mask_bits=b""))
        data["mask_bits"] = bytes(self.mask_bits)
        return data

    @classmethod
    def from_wire(cls, data: dict) -> ScheduledBatch:
        data = dict(data)
        data["new_seqs"] = [NewSeq(**{**seq, "sampling_params": _params(seq["sampling_params"])})
                            for seq in data["new_seqs"]]
        data["cached"] = CachedSeqs(**data["cached"])
        return cls(**data)


def _params(data: dict) -> SamplingParams:
    bias = data.get("logit_bias")
    if bias is not None:  # msgpack keeps int keys; JSON turns them into strings
        data = {**data, "logit_bias": {int(k): v for k, v in bias.items()}}
    if isinstance(data.get("structured_outputs"), dict):
        data = {**data, "structured_outputs": StructuredOutputs(**data["structured_outputs"])}
    return SamplingParams(**data)


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
