"""SamplingParams: what a request asks of the sampler and the stop logic.

Plain Python, importable from every layer. `validate()` raises ValueError with a message fit
for a client; the server calls it at the edge, the engine trusts a validated object.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# OpenAI's default; a request that leaves temperature out gets it (server.params, the cache).
DEFAULT_TEMPERATURE = 1.0
# Below this the sampler takes the argmax: dividing logits by ~0 would overflow.
_GREEDY_BELOW = 1e-5


def is_greedy(temperature: float | None) -> bool:
    """The one definition of greedy, for the engine and the response cache alike. None: the
    default temperature."""
    return (DEFAULT_TEMPERATURE if temperature is None else temperature) < _GREEDY_BELOW


@dataclass
class StructuredOutputs:
    """A constraint on what a request may generate: exactly one of the fields is set.

    The seam between the server (which builds it from `response_format`, `structured_outputs`
    or `tool_choice`) and the engine (which compiles it with the grammar engine and masks the
    logits row by row). Fields follow vLLM's `structured_outputs` request extra.
    """

    json: str | None = None          # a JSON schema, as JSON text
    json_object: bool = False        # any JSON object (OpenAI's response_format json_object)
    regex: str | None = None
    choice: list[str] | None = None  # the output is exactly one of these strings
    grammar: str | None = None       # EBNF (GBNF) grammar text
    disable_any_whitespace: bool = False

    def kind(self) -> str:
        """Which constraint is set; ValueError unless exactly one is."""
        set_ = [name for name, on in (("json", self.json is not None),
                                      ("json_object", self.json_object),
                                      ("regex", self.regex is not None),
                                      ("choice", self.choice is not None),
                                      ("grammar", self.grammar is not None)) if on]
        if len(set_) != 1:
            raise SamplingParamsError(
                "structured_outputs",
                "structured_outputs needs exactly one of json, json_object, regex, choice, "
                f"grammar (got {', '.join(set_) or 'none'})")
        return set_[0]


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0
    max_tokens: int | None = 16  # None: up to the context length
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # top-k alternatives per generated token (0: chosen token only)
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    # Beam search is driven by the frontend (LLM.beam_search) on top of plain steps.
    use_beam_search: bool = False
    beam_width: int = 1
    length_penalty: float = 1.0
    # Constrained decoding (JSON schema, regex, choice, grammar); None: unconstrained.
    structured_outputs: StructuredOutputs | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k is None or self.top_k < 0:
            self.top_k = 0

    @property
    def is_greedy(self) -> bool:
        return is_greedy(self.temperature)

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ValueError naming the first out-of-range field."""
        _check(self.n >= 1, "n", f"n must be at least 1, got {self.n}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty",
                     "presence_penalty", "frequency_penalty", "length_penalty"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value), name,
                   f"{name} must be a finite number")
        _check(self.temperature >= 0, "temperature", "temperature must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", "top_p must be in (0, 1]")
        _check(0 <= self.min_p <= 1, "min_p", "min_p must be in [0, 1]")
        _check(self.top_k >= 0, "top_k", "top_k must be >= 0 (0 or -1 disables it)")
        _check(self.repetition_penalty > 0, "repetition_penalty",
               "repetition_penalty must be > 0")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty",
               "presence_penalty must be in [-2, 2]")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty",
               "frequency_penalty must be in [-2, 2]")
        _check(self.min_tokens >= 0, "min_tokens", "min_tokens must be >= 0")
        if self.max_tokens is not None:
            _check(self.max_tokens >= 1, "max_tokens", "max_tokens must be at least 1")
            _check(self.min_tokens <= self.max_tokens, "min_tokens",
                   f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or value >= 0, name, f"{name} must be >= 0")
        _check(self.beam_width >= 1, "beam_width", "beam_width must be at least 1")
        if self.structured_outputs is not None:
            self.structured_outputs.kind()
        if self.logit_bias:
            for token_id, bias in self.logit_bias.items():
                _check(isinstance(bias, (int, float)) and math.isfinite(bias), "logit_bias",
                       "logit_bias values must be finite numbers")
                _check(vocab_size is None or 0 <= int(token_id) < vocab_size, "logit_bias",
                       f"logit_bias token id {token_id} is outside the vocabulary")
        if vocab_size is not None:
            for token_id in self.stop_token_ids:
                _check(0 <= token_id < vocab_size, "stop_token_ids",
                       f"stop token id {token_id} is outside the vocabulary")


class SamplingParamsError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise SamplingParamsError(param, message)
