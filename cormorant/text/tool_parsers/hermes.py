"""Hermes / Qwen2.5 / Qwen3 / SmolLM2 tool calls: `<tool_call>{"name":..,"arguments":..}</tool_call>`.

Each block holds one call object, or (SmolLM2's training format) a list of them. A block whose
JSON does not parse stays content; an unterminated last block (the model stopped at EOS) is
parsed if its JSON is whole. Imports text.tool_parsers.base.
"""
from __future__ import annotations

import json

from cormorant.text.tool_parsers.base import ParsedOutput, ToolCall, calls_from_json, loads
from cormorant.text.tool_parsers.call_scanner import CallScanner, ScannedCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def block_calls(inner: str, scanner: CallScanner | None = None) -> list[ToolCall] | None:
    """A block's calls, each with its arguments as the model wrote them (what a stream sends
    piece by piece); `scanner`: one that has already read `inner`."""
    calls = calls_from_json(loads(inner.strip()))
    if calls is None:
        return None
    if scanner is None:
        scanner = CallScanner()
        scanner.feed(inner)
    return [_as_written(call, scanner.calls[i] if i < len(scanner.calls) else None)
            for i, call in enumerate(calls)]


def _as_written(call: ToolCall, scanned: ScannedCall | None) -> ToolCall:
    """The arguments' own text when it is the same object, else the normalized JSON."""
    if scanned is None or not scanned.args_done or scanned.name != call.name:
        return call
    raw = scanned.arguments
    if loads(raw) != json.loads(call.arguments):
        return call
    return ToolCall(call.name, raw)


class HermesParser:
    name = "hermes"
    markers = (OPEN,)
    leading_only = False
    short_ids = False
    end_marker: str | None = CLOSE
    streams_arguments = True  # a stream sends names and argument pieces as they arrive

    def take_complete(self, buffer: str) -> tuple[list[ToolCall | str], str]:
        """Whole blocks at the head of `buffer` (which starts at a tool section)."""
        out: list[ToolCall | str] = []
        pos = 0
        while True:
            start = buffer.find(OPEN, pos)
            if start < 0:
                # Text after the last block: content, unless it may begin another block.
                tail = buffer[pos:]
                keep = _partial_marker_len(tail)
                if tail[:len(tail) - keep]:
                    out.append(tail[:len(tail) - keep])
                return out, tail[len(tail) - keep:]
            if start > pos:
                out.append(buffer[pos:start])
            end = buffer.find(CLOSE, start + len(OPEN))
            if end < 0:
                return out, buffer[start:]
            block = buffer[start:end + len(CLOSE)]
            calls = block_calls(buffer[start + len(OPEN):end])
            out.extend(calls if calls is not None else [block])
            pos = end + len(CLOSE)

    def finish(self, buffer: str) -> list[ToolCall | str]:
        """The rest of a stream: whole blocks, then an unterminated one parsed if it can be."""
        out, rest = self.take_complete(buffer)
        if rest.startswith(OPEN):
            calls = block_calls(rest[len(OPEN):])
            out.extend(calls if calls is not None else [rest])
        elif rest:
            out.append(rest)
        return out

    def parse(self, text: str) -> ParsedOutput:
        start = text.find(OPEN)
        if start < 0:
            return ParsedOutput(text)
        return assemble(text, [text[:start], *self.finish(text[start:])])


def _partial_marker_len(text: str) -> int:
    """How many trailing characters of `text` could begin OPEN."""
    for size in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0


def assemble(text: str, pieces: list[ToolCall | str]) -> ParsedOutput:
    """Calls and content pieces -> ParsedOutput; no call at all: the text, untouched."""
    calls = [p for p in pieces if isinstance(p, ToolCall)]
    if not calls:
        return ParsedOutput(text)
    content = "".join(p for p in pieces if isinstance(p, str)).strip()
    return ParsedOutput(content or None, calls)
