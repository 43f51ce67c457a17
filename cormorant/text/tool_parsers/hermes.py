"""Hermes / Qwen2.5 / Qwen3 / SmolLM2 tool calls: `<tool_call>{"name":..,"arguments":..}</tool_call>`.

Each block holds one call object, or (SmolLM2's training format) a list of them. A block whose
JSON does not parse stays content; an unterminated last block (the model stopped at EOS) is
parsed if its JSON is whole. Arguments come back as the model wrote them. Blocks are found
and read by text.tool_parsers.hermes_stream, the same code a stream goes through (here with
its calls held until each block is checked). Imports text.tool_parsers (base, hermes_stream).
"""
from __future__ import annotations

from cormorant.text.tool_parsers.base import ParsedOutput, ToolCall
from cormorant.text.tool_parsers.hermes_stream import CLOSE, OPEN, HermesSectionStream


class HermesParser:
    name = "hermes"
    markers = (OPEN,)
    leading_only = False
    short_ids = False
    end_marker: str | None = CLOSE
    streams_arguments = True  # streams go through HermesSectionStream, piece by piece

    def take_complete(self, buffer: str) -> tuple[list[ToolCall | str], str]:
        """Whole blocks are read by HermesSectionStream (see streams_arguments)."""
        return [], buffer

    def finish(self, buffer: str) -> list[ToolCall | str]:
        """A whole tool section (from its first `<tool_call>`): calls and content pieces."""
        section = HermesSectionStream(hold_calls=True)
        pieces = section.feed(buffer) + section.finish()
        return [p for p in pieces if isinstance(p, (ToolCall, str))]

    def parse(self, text: str) -> ParsedOutput:
        start = text.find(OPEN)
        if start < 0:
            return ParsedOutput(text)
        return assemble(text, [text[:start], *self.finish(text[start:])])


def assemble(text: str, pieces: list[ToolCall | str]) -> ParsedOutput:
    """Calls and content pieces -> ParsedOutput; no call at all: the text, untouched."""
    calls = [p for p in pieces if isinstance(p, ToolCall)]
    if not calls:
        return ParsedOutput(text)
    content = "".join(p for p in pieces if isinstance(p, str)).strip()
    return ParsedOutput(content or None, calls)
