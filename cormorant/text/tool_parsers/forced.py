"""Outputs under a forced tool choice: the JSON the constraint asked for, read back as calls.

`tool_choice: "required"` asks for a JSON array of `{"name", "arguments"}` objects; a named
function asks for that function's arguments object alone. Both are plain JSON (no tags),
whatever the model family, as vLLM does. Imports text.tool_parsers.base.
"""
from __future__ import annotations

import json

from cormorant.text.tool_parsers.base import (ParsedOutput, ToolCall, calls_from_json,
                                              loads)


class RequiredParser:
    name = "required"
    markers = ("",)  # the whole output is the tool section
    leading_only = True
    short_ids = False
    end_marker: str | None = None

    def __init__(self, short_ids: bool = False) -> None:
        self.short_ids = short_ids

    def take_complete(self, buffer: str) -> tuple[list[ToolCall | str], str]:
        return [], buffer

    def finish(self, buffer: str) -> list[ToolCall | str]:
        return self.parse(buffer).calls or [buffer]

    def parse(self, text: str) -> ParsedOutput:
        value = loads(text)
        calls = calls_from_json(value) if isinstance(value, list) else None
        return ParsedOutput(None, calls) if calls else ParsedOutput(text)


class NamedParser(RequiredParser):
    name = "named"

    def __init__(self, function: str, short_ids: bool = False) -> None:
        super().__init__(short_ids)
        self.function = function

    def parse(self, text: str) -> ParsedOutput:
        value = loads(text)
        if not isinstance(value, dict):
            return ParsedOutput(text)
        return ParsedOutput(None, [ToolCall(self.function, json.dumps(value,
                                                                      ensure_ascii=False))])
