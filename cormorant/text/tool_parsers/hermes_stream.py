"""Hermes tool blocks, read as they stream: each call's name once complete, then its arguments.

Text between blocks is content (less a tail that could begin `<tool_call>`); inside a block
the text goes to a CallScanner, whose events become a CallHeader and ArgsDelta pieces. A
block ends at its first `</tool_call>` (as vLLM reads it, even inside a JSON string). Then (or when the stream ends
inside it) the block is checked with `json`: a valid block's remaining arguments text
follows (the pieces joined are the arguments exactly as the non-streamed parse gives them);
a block whose call never began is sent whole as content if it does not parse, as its calls
otherwise. A call already begun stays a call (a stream cannot take deltas back). With
`hold_calls` (the non-streamed parse) no piece of a call goes out before its block is checked.
Imports text.tool_parsers (base, call_scanner).
"""
from __future__ import annotations

import json

from cormorant.text.tool_parsers.base import (ArgsDelta, CallHeader, ToolCall, calls_from_json,
                                              loads)
from cormorant.text.tool_parsers.call_scanner import CallScanner, ScannedCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
Piece = ToolCall | CallHeader | ArgsDelta | str


def block_calls(inner: str, scanner: CallScanner) -> list[ToolCall] | None:
    """A block's calls, each with its arguments as the model wrote them (what a stream sends
    piece by piece); `scanner` has read `inner`."""
    calls = calls_from_json(loads(inner.strip()))
    if calls is None:
        return None
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


class HermesSectionStream:
    """feed(delta) and finish() over the text from the first `<tool_call>` on."""

    def __init__(self, hold_calls: bool = False) -> None:
        self._hold_calls = hold_calls
        self._inside = False
        self._hold = ""  # a tail that could begin the next marker
        self._block: list[str] = []  # the open block's text, after OPEN
        self._scan = CallScanner()

    def feed(self, delta: str) -> list[Piece]:
        text, self._hold = self._hold + delta, ""
        out: list[Piece] = []
        while text:
            marker = CLOSE if self._inside else OPEN
            at = text.find(marker)
            if at < 0:
                keep = _partial_len(text, marker)
                self._take(text[:len(text) - keep], out)
                self._hold = text[len(text) - keep:]
                break
            self._take(text[:at], out)
            if self._inside:
                out += self._close(terminated=True)
            else:
                self._inside, self._block, self._scan = True, [], CallScanner()
            text = text[at + len(marker):]
        return out

    def finish(self) -> list[Piece]:
        text, self._hold = self._hold, ""
        if not self._inside:
            return [text] if text else []
        out: list[Piece] = []
        self._take(text, out)
        return out + self._close(terminated=False)

    def _take(self, text: str, out: list[Piece]) -> None:
        if not text:
            return
        if not self._inside:
            out.append(text)
            return
        self._block.append(text)
        events = self._scan.feed(text)
        if self._hold_calls:
            return
        for kind, value in events:
            if kind == "header":
                out.append(CallHeader(value))
            elif kind == "args":
                out.append(ArgsDelta(value))

    def _close(self, terminated: bool) -> list[Piece]:
        self._inside = False
        inner = "".join(self._block)
        calls = block_calls(inner, self._scan)
        begun = 0 if self._hold_calls else self._scan.headers
        if calls is None:
            if begun:
                return []
            return [OPEN + inner + (CLOSE if terminated else "")]
        out: list[Piece] = []
        for i, call in enumerate(calls):
            if i >= begun:
                out.append(call)
                continue
            sent = self._scan.calls[i].arguments if i < len(self._scan.calls) else ""
            rest = call.arguments[len(sent):] if call.arguments.startswith(sent) else ""
            if rest:
                out.append(ArgsDelta(rest))
        return out


def _partial_len(text: str, marker: str) -> int:
    """How many trailing characters of `text` could begin `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
