"""Tool formats whose calls are the whole output: Llama 3.1+ JSON and Mistral `[TOOL_CALLS]`.

Llama 3.1/3.2/3.3 (JSON tool mode): `{"name": ..., "parameters": {...}}`, optionally after
`<|python_tag|>`, several separated by `;`. Mistral: `[TOOL_CALLS] [{"name": ..., "arguments":
{...}}, ...]` (the control token is hidden when special tokens are skipped, so it is optional).
Either way the output is all calls or all content: anything left over keeps it content.
Imports text.tool_parsers.base.
"""
from __future__ import annotations

import json

from cormorant.text.tool_parsers.base import ParsedOutput, ToolCall, calls_from_json

_DECODER = json.JSONDecoder()


def _json_values(text: str, separators: str) -> list | None:
    """Consecutive JSON values separated by whitespace or `separators`; None if anything else."""
    values, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
            pos += 1
        if pos == len(text):
            return values
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return None
        values.append(value)


class _LeadingJson:
    name = ""
    prefixes: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    leading_only = True
    short_ids = False
    end_marker: str | None = None

    def take_complete(self, buffer: str) -> tuple[list[ToolCall | str], str]:
        return [], buffer  # the calls end with the output

    def finish(self, buffer: str) -> list[ToolCall | str]:
        parsed = self.parse(buffer)
        return parsed.calls or [buffer]

    def parse(self, text: str) -> ParsedOutput:
        body = text.strip()
        for prefix in self.prefixes:
            if body.startswith(prefix):
                body = body[len(prefix):]
                break
        values = _json_values(body, ";")
        if not values:
            return ParsedOutput(text)
        calls: list[ToolCall] = []
        for value in values:
            found = calls_from_json(value)
            if found is None:
                return ParsedOutput(text)
            calls.extend(found)
        return ParsedOutput(None, calls)


class Llama3JsonParser(_LeadingJson):
    name = "llama3_json"
    prefixes = ("<|python_tag|>",)
    markers = ("<|python_tag|>", "{", "[")


class MistralParser(_LeadingJson):
    name = "mistral"
    prefixes = ("[TOOL_CALLS]",)
    markers = ("[TOOL_CALLS]", "[")
    short_ids = True
