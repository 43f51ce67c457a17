"""Stop strings: find the first stop string in streamed text, across token boundaries.

`StopStringMatcher` is fed text deltas (from the detokenizer) and returns what may be shown
now. Text that could still turn into a stop string (the longest tail of the stream that is a
proper prefix of some stop) is held back, so a client never sees part of a stop string that
later matches; `flush()` releases it when generation ends without a match.

"First" means the occurrence that completes first as the text streams in (smallest end
index); among occurrences ending at the same place, the one starting earliest. That rule
gives the same answer however the text is cut into deltas, which "earliest start" or "first
in the list" do not (with stops "bc" and "abcd", "abc" streamed char by char has already
stopped on "bc" before "abcd" could complete).

Imports: the standard library only.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class StopMatch(NamedTuple):
    """The outcome of one `feed`: text to emit now, and the stop string if one matched.
    A tuple, so callers may unpack it: `text, stop = matcher.feed(delta)`."""

    text: str
    stop: str | None = None

    @property
    def stopped(self) -> bool:
        return self.stop is not None


class StopStringMatcher:
    """Per-sequence matcher. After a match it is done: later feeds return empty text."""

    __slots__ = ("_stops", "_include", "_prefixes", "_max_hold", "_held", "_stopped")

    def __init__(self, stops: Iterable[str], include_stop_str_in_output: bool = False) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))  # "" would match everywhere
        self._include = include_stop_str_in_output
        # Every proper prefix of every stop: a tail of the stream in this set may still grow
        # into a stop, so it must be held back.
        self._prefixes = frozenset(s[:i] for s in self._stops for i in range(1, len(s)))
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""
        self._stopped = False

    @property
    def stops(self) -> tuple[str, ...]:
        return self._stops

    @property
    def held_text(self) -> str:
        """Text received but not yet emitted."""
        return self._held

    @property
    def stopped(self) -> bool:
        return self._stopped

    def feed(self, delta: str) -> StopMatch:
        if self._stopped or not delta:
            return StopMatch("")
        if not self._stops:
            return StopMatch(delta)
        buf = self._held + delta
        hit = self._first_match(buf)
        if hit is not None:
            start, stop = hit
            self._stopped = True
            self._held = ""
            return StopMatch(buf[:start + len(stop)] if self._include else buf[:start], stop)
        keep = self._partial_tail_len(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return StopMatch(buf[:len(buf) - keep])

    def flush(self) -> str:
        """Generation ended without a stop string: release the held-back tail."""
        held, self._held = self._held, ""
        return "" if self._stopped else held

    def _first_match(self, buf: str) -> tuple[int, str] | None:
        # Only held + delta is searched: held text holds no complete stop (it would have
        # matched), and emitted text cannot start one (it would have been held).
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            start = buf.find(stop)
            if start >= 0:
                key = (start + len(stop), start, stop)
                if best is None or key[:2] < best[:2]:
                    best = key
        return None if best is None else (best[1], best[2])

    def _partial_tail_len(self, buf: str) -> int:
        for n in range(min(self._max_hold, len(buf)), 0, -1):
            if buf[-n:] in self._prefixes:
                return n
        return 0
