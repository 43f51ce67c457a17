"""Request models of /v1/embeddings and /v1/classify, and the encoder seam the routes use.

`input` takes OpenAI's four shapes: a string, a list of strings, a list of token ids or a
list of token-id lists. Counts are bounded here by ServerConfig.max_prompts (before items are
validated); lengths, which depend on the model, are checked by `encoder_inputs` after
tokenization, with a 400 naming both numbers. Token ids are taken as the whole sequence
(the client adds [CLS]/[SEP] itself, as with any token-id input).
Imports pydantic and server modules (protocol, errors, prompts).
"""
from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cormorant.server.errors import APIError, bound
from cormorant.server.prompts import check_token_ids, off_loop
from cormorant.server.protocol import limits

EncoderInput = str | list[str] | list[int] | list[list[int]]


class EncoderLike(Protocol):
    """What the routes need of an encoder (today frontend.embedder.Embedder)."""

    model_name: str
    max_model_len: int
    vocab_size: int
    is_classifier: bool
    num_forward_passes: int

    def tokenize(self, text: str) -> list[int]: ...

    async def embed(self, seqs: list[list[int]]) -> list[list[float]]: ...

    async def classify(self, seqs: list[list[int]]) -> list[Any]: ...

    def shutdown(self) -> None: ...


class _EncoderRequest(BaseModel):
    # As server.protocol's models: strict types, unknown fields are a 400 that names them.
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
    UNSUPPORTED: ClassVar[tuple[str, ...]] = ()

    model: str = Field(min_length=1, max_length=256)
    input: EncoderInput
    user: str | None = Field(None, max_length=256)

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any, info: ValidationInfo) -> Any:
        max_items = limits(info).max_prompts
        if isinstance(value, list):
            if not value:
                raise ValueError("input must not be empty")
            is_ids = all(isinstance(x, int) and not isinstance(x, bool) for x in value)
            if not is_ids and len(value) > max_items:
                raise ValueError(f"input has {len(value)} items; at most {max_items} are "
                                 "allowed")
            if any(isinstance(x, list) and not x for x in value):
                raise ValueError("input must not contain an empty token list")
        elif isinstance(value, str) and not value:
            raise ValueError("input must not be an empty string")
        return value


class EmbeddingRequest(_EncoderRequest):
    # OpenAI's text-embedding-3 models can shorten vectors; these encoders cannot.
    UNSUPPORTED: ClassVar[tuple[str, ...]] = ("dimensions",)

    encoding_format: Literal["float", "base64"] = "float"


class ClassificationRequest(_EncoderRequest):
    pass


def input_items(value: EncoderInput) -> list[str | list[int]]:
    if isinstance(value, str) or all(isinstance(x, int) for x in value):
        return [value]  # type: ignore[list-item]
    return list(value)  # type: ignore[arg-type]


async def encoder_inputs(value: EncoderInput, encoder: EncoderLike, executor: Executor
                         ) -> list[list[int]]:
    """Every input as token ids, each checked against the vocabulary and the context."""
    items = input_items(value)
    out = []
    for i, item in enumerate(items):
        param = "input" if len(items) == 1 else f"input[{i}]"
        if isinstance(item, str):
            ids = await off_loop(executor, len(item), encoder.tokenize, item)
        else:
            ids = check_token_ids(list(item), encoder.vocab_size, param)
        if len(ids) > encoder.max_model_len:
            raise APIError(400, f"{param} has {len(ids)} tokens, more than the model "
                           f"'{bound(encoder.model_name, 128)}' takes "
                           f"({encoder.max_model_len}).", param=param,
                           code="context_length_exceeded")
        out.append(ids)
    return out
