"""Pydantic models of the OpenAI request bodies the server accepts, and their field bounds.

Models are strict (no "0.5" for a float, no 2.0 for an int) and forbid unknown fields, so a
parameter the server does not implement is a 400 that names it rather than being ignored.
Bounds that depend on configuration (list lengths, n, logprobs) read the ServerConfig passed
as validation context, and run before the list items are validated. Checks that need the
model (vocabulary, context length) live in server.params.
Cross-field checks raise APIError directly (pydantic lets non-ValueError exceptions through)
so that the 400 can name the parameter. Imports pydantic and server modules (config, errors,
tool_protocol).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from cormorant.server.config import ServerConfig
from cormorant.server.errors import APIError
from cormorant.server.tool_protocol import (AssistantToolCall, TemplateKwargs, ToolChoice,
                                            ToolList, check_tool_choice)

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
_DEFAULT_LIMITS = ServerConfig()
INT64_MIN, UINT64_END = -(2**63), 2**64


def limits(info: ValidationInfo) -> ServerConfig:
    context = info.context or {}
    return context.get("config", _DEFAULT_LIMITS)


def _invalid(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _bounded_list(value: Any, name: str, max_len: int) -> Any:
    if isinstance(value, list) and len(value) > max_len:
        raise ValueError(f"{name} has {len(value)} items; at most {max_len} are allowed")
    return value


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None


class JsonSchemaFormat(BaseModel):
    """OpenAI's response_format.json_schema. The schema is enforced whether strict or not."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # None: any JSON value
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise _invalid("response_format", "response_format.json_schema is required for "
                           "type 'json_schema' and allowed only there")
        return self


class StructuredOutputsField(BaseModel):
    """vLLM's `structured_outputs` request extra: exactly one constraint (server.structured
    checks it and its bounds)."""

    model_config = _STRICT
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    disable_any_whitespace: bool = False


class SamplingFields(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share."""

    model_config = _STRICT
    # Known OpenAI parameters this server does not implement: a non-null value is a 400 that
    # names it (server.body checks these before validation, with a clearer message).
    UNSUPPORTED: ClassVar[tuple[str, ...]] = ()

    model: str = Field(min_length=1, max_length=256)
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=1 << 30)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=100)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, lt=UINT64_END)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # vLLM's prefix-cache salt: only requests with equal salts share cached prompt blocks; the
    # server combines it with the caller's key namespace (gateway.auth.keys.prefix_cache_salt).
    cache_salt: str | None = Field(None, min_length=1, max_length=256)
    # Engine extensions (vLLM spells them the same way).
    min_tokens: int = Field(0, ge=0, le=1 << 30)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Constrained decoding (server.structured): OpenAI's response_format and vLLM's extra.
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, value: int, info: ValidationInfo) -> int:
        if value > limits(info).max_n:
            raise ValueError(f"n must be at most {limits(info).max_n}")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any, info: ValidationInfo) -> Any:
        cfg = limits(info)
        stops = [value] if isinstance(value, str) else value
        if isinstance(stops, list):
            _bounded_list(stops, "stop", cfg.max_stop)
            for item in stops:
                if isinstance(item, str) and not 1 <= len(item) <= cfg.max_stop_chars:
                    raise ValueError(f"each stop string must have 1 to {cfg.max_stop_chars} "
                                     "characters")
        return value

    @field_validator("stop_token_ids", mode="before")
    @classmethod
    def _stop_ids(cls, value: Any, info: ValidationInfo) -> Any:
        return _bounded_list(value, "stop_token_ids", limits(info).max_stop_token_ids)

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, value: Any, info: ValidationInfo) -> Any:
        cfg = limits(info)
        if isinstance(value, dict):
            if len(value) > cfg.max_logit_bias:
                raise ValueError(f"logit_bias has {len(value)} entries; at most "
                                 f"{cfg.max_logit_bias} are allowed")
            for key, bias in value.items():
                if not (isinstance(key, str) and key.isascii() and key.isdigit()
                        and len(key) <= 12):
                    raise ValueError(f"logit_bias keys must be token ids, got {key[:32]!r}")
                if isinstance(bias, (int, float)) and not -100 <= bias <= 100:
                    raise ValueError("logit_bias values must be between -100 and 100")
        return value

    @model_validator(mode="after")
    def _stream_options(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise _invalid("stream_options",
                           "The 'stream_options' parameter is only allowed when 'stream' is true.")
        return self


def _check_prompt(value: Any, cfg: ServerConfig) -> Any:
    """str | list[str] | list[int] | list[list[int]], non-empty, with bounded lists."""
    shape_msg = ("prompt must be a string, a list of strings, a list of token ids or a list "
                 "of token id lists")
    if isinstance(value, str):
        if not value:
            raise ValueError("prompt must not be empty")
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(shape_msg if value != [] else "prompt must not be empty")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return value
    _bounded_list(value, "prompt", cfg.max_prompts)
    for item in value:
        if isinstance(item, str):
            if not item:
                raise ValueError("prompt strings must not be empty")
        elif isinstance(item, list):
            if not item:
                raise ValueError("prompt token id lists must not be empty")
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in item):
                raise ValueError(shape_msg)
        else:
            raise ValueError(shape_msg)
    if len({type(item) for item in value}) > 1:
        raise ValueError(shape_msg)
    return value


class CompletionRequest(SamplingFields):
    UNSUPPORTED: ClassVar[tuple[str, ...]] = ("suffix",)

    prompt: Any
    max_tokens: int | None = Field(None, ge=1, le=1 << 30)  # None: 16, clamped to the context
    echo: bool = False
    logprobs: int | None = Field(None, ge=0)
    best_of: int | None = Field(None, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any, info: ValidationInfo) -> Any:
        return _check_prompt(value, limits(info))

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value > limits(info).max_logprobs:
            raise ValueError(f"logprobs must be at most {limits(info).max_logprobs}")
        return value

    @model_validator(mode="after")
    def _best_of(self) -> "CompletionRequest":
        if self.best_of is not None and self.best_of != self.n:
            raise _invalid("best_of", "best_of other than n is not supported by this server")
        return self


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


# Keys the official SDK sends back when a caller appends a previous response's message object;
# null (or empty) they mean nothing, anything else asks for a feature we do not serve.
_ECHOED_MESSAGE_KEYS = ("refusal", "annotations", "audio", "function_call", "tool_calls")


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None: an assistant turn of tool calls only
    name: str | None = Field(None, max_length=256)
    tool_calls: list[AssistantToolCall] | None = None  # assistant turns only
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)  # tool turns only
    reasoning_content: str | None = None  # echoed back by clients; templates drop it

    @model_validator(mode="after")
    def _roles(self) -> "ChatMessage":
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages may carry tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only on an assistant "
                             "message with tool_calls)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _drop_null_echoes(cls, value: Any) -> Any:
        if isinstance(value, dict) and any(k in value for k in _ECHOED_MESSAGE_KEYS):
            value = dict(value)
            for key in _ECHOED_MESSAGE_KEYS:
                if key in value and value[key] in (None, []):
                    del value[key]
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _content_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind != "text":
                    raise ValueError(f"content part type '{kind[:32]}' is not supported; "
                                     "only 'text' parts are")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    UNSUPPORTED: ClassVar[tuple[str, ...]] = (
        "functions", "function_call", "audio", "modalities", "prediction",
        "web_search_options", "reasoning_effort")

    messages: list[ChatMessage]
    tools: ToolList = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: TemplateKwargs = None
    max_tokens: int | None = Field(None, ge=1, le=1 << 30)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 30)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0)

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("messages must not be empty")
        return _bounded_list(value, "messages", limits(info).max_messages)

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value > limits(info).max_logprobs:
            raise ValueError(f"top_logprobs must be at most {limits(info).max_logprobs}")
        return value

    @model_validator(mode="after")
    def _cross_fields(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise _invalid("top_logprobs", "top_logprobs requires logprobs to be true")
        check_tool_choice(self.tools, self.tool_choice)
        return self


class TokenizeRequest(BaseModel):
    model_config = _STRICT
    model: str | None = Field(None, max_length=256)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: ToolList = None  # with messages: rendered as chat requests render them
    chat_template_kwargs: TemplateKwargs = None

    @field_validator("messages", mode="before")
    @classmethod
    def _messages(cls, value: Any, info: ValidationInfo) -> Any:
        return _bounded_list(value, "messages", limits(info).max_messages)

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise _invalid("prompt", "send exactly one of prompt or messages")
        if self.prompt == "" or self.messages == []:
            raise _invalid("prompt" if self.messages is None else "messages",
                           "the input to tokenize must not be empty")
        return self


class DetokenizeRequest(BaseModel):
    model_config = _STRICT
    model: str | None = Field(None, max_length=256)
    tokens: list[int]

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any, info: ValidationInfo) -> Any:
        # Longer than any context could be is never a legitimate request.
        return _bounded_list(value, "tokens", (info.context or {}).get("max_tokens", 1 << 20))


class BatchCreateRequest(BaseModel):
    """POST /v1/batches (server.route_batches)."""
    model_config = _STRICT

    input_file_id: str = Field(max_length=128)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
