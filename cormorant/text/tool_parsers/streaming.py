"""Tool calls out of a stream of text deltas: content first, then calls as they complete.

Before a tool section starts, text goes out as content, less a tail that could still begin a
marker (held until the next delta decides). Once a marker is seen, the rest is buffered and
the parser hands back whole calls (Hermes: block by block; Llama/Mistral: at the end). Every
character is scanned a bounded number of times, so a stream costs linear time.
Imports text.tool_parsers.base.
"""
from __future__ import annotations

from cormorant.text.tool_parsers.base import ToolCall, ToolParser


class StreamingToolParser:
    """feed(delta) and finish() return what is ready: content strings and ToolCalls, in order."""

    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self._pending = ""  # content not yet sent (a possible marker start)
        self._buffer: str | None = None  # the tool section, once it began
        self._decided = False  # leading_only: the first visible text ruled out a tool section

    def feed(self, delta: str) -> list[ToolCall | str]:
        if self._buffer is not None:
            out, self._buffer = self.parser.take_complete(self._buffer + delta)
            return out
        text = self._pending + delta
        if self._decided:
            self._pending = ""
            return [text] if text else []
        start, keep = self._find_marker(text)
        if start is not None:
            self._buffer = ""
            out: list[ToolCall | str] = [text[:start]] if text[:start] else []
            return out + self.feed(text[start:])
        self._pending = text[len(text) - keep:]
        return [text[:len(text) - keep]] if len(text) > keep else []

    def finish(self) -> list[ToolCall | str]:
        if self._buffer is not None:
            return self.parser.finish(self._buffer)  # type: ignore[attr-defined]
        return [self._pending] if self._pending else []

    def _find_marker(self, text: str) -> tuple[int | None, int]:
        """(where a tool section starts, or None; how many trailing characters to hold)."""
        markers = self.parser.markers
        if self.parser.leading_only:
            body = text.lstrip()
            if not body:
                return None, len(text)
            if any(body.startswith(m) for m in markers):
                return len(text) - len(body), 0
            if any(m.startswith(body) for m in markers):
                return None, len(text)
            self._decided = True
            return None, 0
        # `text` is the held tail (shorter than a marker) plus one delta: linear overall.
        found = [at for at in (text.find(m) for m in markers) if at >= 0]
        if found:
            return min(found), 0
        keep = max((_partial_len(text, m) for m in markers), default=0)
        return None, keep


def _partial_len(text: str, marker: str) -> int:
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
