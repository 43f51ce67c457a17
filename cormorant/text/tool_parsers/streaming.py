"""Tool calls out of a stream of text deltas: content first, then calls as they complete.

Before a tool section starts, text goes out as content, less a tail that could still begin a
marker (held until the next delta decides). Once a marker is seen, the rest is buffered and
the parser hands back whole calls (Llama/Mistral: at the end), or, for parsers that stream
arguments (Hermes), each call's CallHeader as soon as its name is complete and ArgsDelta
pieces as its arguments grow (text.tool_parsers.hermes_stream). The buffer is joined and
parsed only when a call may have ended, so a stream costs time linear in its length.
Imports text.tool_parsers (base, hermes_stream).
"""
from __future__ import annotations

from cormorant.text.tool_parsers.base import ArgsDelta, CallHeader, ToolCall, ToolParser
from cormorant.text.tool_parsers.hermes_stream import HermesSectionStream

Piece = ToolCall | CallHeader | ArgsDelta | str


class StreamingToolParser:
    """feed(delta) and finish() return what is ready, in order: content strings, ToolCalls,
    and (Hermes) CallHeader / ArgsDelta pieces."""

    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self._pending = ""  # content not yet sent (a possible marker start)
        self._parts: list[str] | None = None  # the tool section, once it began, in pieces
        self._tail = ""  # its last characters: an end marker may straddle two deltas
        self._decided = False  # leading_only: the first visible text ruled out a tool section
        self._section = (HermesSectionStream()
                         if getattr(parser, "streams_arguments", False) else None)

    def feed(self, delta: str) -> list[Piece]:
        if self._parts is not None:
            return self._feed_section(delta)
        text = self._pending + delta
        if self._decided:
            self._pending = ""
            return [text] if text else []
        start, keep = self._find_marker(text)
        if start is not None:
            self._parts = []
            out: list[Piece] = [text[:start]] if text[:start] else []
            return out + self.feed(text[start:])
        self._pending = text[len(text) - keep:]
        return [text[:len(text) - keep]] if len(text) > keep else []

    def _feed_section(self, delta: str) -> list[Piece]:
        """The section is joined and handed to the parser only when a call may have ended
        (its end marker arrived), so a long call costs linear time, not a rescan per delta."""
        assert self._parts is not None
        if self._section is not None:
            return self._section.feed(delta)
        self._parts.append(delta)
        end = self.parser.end_marker
        window = self._tail + delta
        self._tail = window[-len(end) + 1:] if end else ""
        if not end or end not in window:
            return []
        out, rest = self.parser.take_complete("".join(self._parts))
        self._parts, self._tail = [rest], rest[-len(end) + 1:]
        return out

    def finish(self) -> list[Piece]:
        if self._section is not None and self._parts is not None:
            return self._section.finish()
        if self._parts is not None:
            return self.parser.finish("".join(self._parts))  # type: ignore[attr-defined]
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
