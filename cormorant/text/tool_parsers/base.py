"""The types every tool-call parser shares: ToolCall, ParsedOutput and the parser interface.

A parser turns a model's whole output text into (content, tool calls), linear in the text's
length (the `json` module, never eval). Calls that do not parse are no calls: their text stays
content, so a malformed output degrades to a plain answer instead of an error.
Imports only the standard library.
"""
from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Protocol

_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of an object, as OpenAI sends it


@dataclass(frozen=True)
class CallHeader:
    """Streaming: a call has begun; its name is known, its arguments follow as ArgsDelta."""
    name: str


@dataclass(frozen=True)
class ArgsDelta:
    """Streaming: the next piece of the last begun call's arguments text."""
    text: str


@dataclass
class ParsedOutput:
    content: str | None
    calls: list[ToolCall] = field(default_factory=list)


def new_call_id(short: bool = False) -> str:
    """OpenAI's `call_...` ids; Mistral's templates insist on 9 alphanumeric characters."""
    if short:
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return "call_" + secrets.token_hex(12)


def call_from_json(obj: Any, args_keys: tuple[str, ...] = ("arguments", "parameters")
                   ) -> ToolCall | None:
    """{"name": str, "arguments"|"parameters": object or its JSON text} -> a ToolCall."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = next((obj[k] for k in args_keys if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def calls_from_json(obj: Any) -> list[ToolCall] | None:
    """One call object or a list of them; None unless every item is a call."""
    items = obj if isinstance(obj, list) else [obj]
    calls = [call_from_json(item) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]


def loads(text: str) -> Any:
    """json.loads, None for anything that is not exactly one JSON value."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


class ToolParser(Protocol):
    """One model family's tool-call format."""
    name: str
    # Where a tool section may start: anywhere in the text (a tag), or only at its start.
    markers: tuple[str, ...]
    leading_only: bool
    short_ids: bool  # the family's template wants 9-character call ids
    end_marker: str | None  # what ends one call in a stream; None: calls end with the output

    def parse(self, text: str) -> ParsedOutput: ...

    def take_complete(self, buffer: str) -> tuple[list[ToolCall | str], str]:
        """Streaming: the calls (or content text) complete at the head of a tool section's
        buffer, and what is left of it. Formats whose calls end only with the output return
        ([], buffer)."""
        ...
