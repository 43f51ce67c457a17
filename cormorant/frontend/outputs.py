"""What the frontend hands to callers (the offline LLM API and the server): text, not tensors."""
from __future__ import annotations

from dataclasses import dataclass, field

# One generated position: chosen token id, its logprob, and the top-k {token_id: logprob}.
@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass
class CompletionOutput:
    index: int
    text: str = ""  # cumulative text so far
    token_ids: list[int] = field(default_factory=list)  # cumulative generated ids
    text_delta: str = ""  # text added by the latest update (for streaming)
    num_new_tokens: int = 0  # ids added by the latest update: token_ids[-num_new_tokens:]
    logprobs: list[TokenLogprob] | None = None  # cumulative, when requested
    finish_reason: str | None = None  # stop | length | abort
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    cumulative_logprob: float | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    req_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first position has none
    num_cached_tokens: int = 0
    finished: bool = False
    error: str | None = None  # set when the engine rejected the request
    # Timings (monotonic seconds) for metrics: arrival, first scheduled, first token, finish.
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)
