"""Incremental scan of tool-call JSON: a call's name once complete, its arguments as they grow.

`CallScanner.feed(text)` reads one more piece of a call object `{"name": .., "arguments":
{..}}` (or a list of them) and returns events: `("header", name)` when a call's name string
has closed, `("args", text)` for the arguments object's text as it arrives (held until the name
is known), `("end", "")` when a call object closes. Only text inside the arguments object's own
braces is ever sent, so the outer object's `}` is never mistaken for arguments. Every character
is read once (runs of plain characters with one regex search), in a small state machine that
knows strings and escapes: linear over a stream.
The scanner is lenient (it does not validate); callers check the whole block with `json`.
Imports only the standard library.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

ARGS_KEYS = ("arguments", "parameters")
Event = tuple[str, str]
_SIGNIFICANT = re.compile(r'["{}\[\]:,]')
_STRING_STOP = re.compile(r'["\\]')


@dataclass
class ScannedCall:
    name: str | None = None
    args: list[str] = field(default_factory=list)  # the arguments object's text, in pieces
    args_done: bool = False
    pending: list[str] = field(default_factory=list)  # args seen before the name

    @property
    def arguments(self) -> str:
        return "".join(self.args)


class CallScanner:
    def __init__(self) -> None:
        self.calls: list[ScannedCall] = []
        self._stack: list[str] = []
        self._in_str = self._esc = False
        self._call_depth = 0  # 1: the block is one call object; 2: a list of them
        self._expect = "key"  # at call level: key, colon, value or comma
        self._key: str | None = None
        self._capture: list[str] | None = None  # a call-level key or name string literal
        self._args_depth = 0  # stack depth inside the arguments object; 0: not in it

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        start = 0 if self._args_depth else -1  # where this piece's arguments text begins
        i = 0
        while i < len(text):
            if self._in_str:
                i = self._string_run(text, i, events)
                continue
            found = _SIGNIFICANT.search(text, i)  # whitespace and scalars change nothing
            if found is None:
                break
            i, ch = found.start(), found.group()
            if ch == '"':
                self._open_string()
            elif ch in "{[":
                if self._open(ch):
                    start = i
            elif ch in "}]":
                if self._close(ch, events):
                    self._args(text[start:i + 1], events)
                    start = -1
            elif self._at_call_level():
                self._punct(ch)
            i += 1
        if start >= 0 and self._args_depth:
            self._args(text[start:], events)
        return events

    def _string_run(self, text: str, i: int, events: list[Event]) -> int:
        """Read string characters from `i` up to the next quote or backslash; where to go on."""
        if self._esc:
            self._esc = False
            if self._capture is not None:
                self._capture.append(text[i])
            return i + 1
        found = _STRING_STOP.search(text, i)
        end = found.start() + 1 if found else len(text)
        if self._capture is not None:
            self._capture.append(text[i:end])
        if found is None:
            return end
        if found.group() == "\\":
            self._esc = True
        else:
            self._in_str = False
            if self._capture is not None:
                self._string_done("".join(self._capture), events)
                self._capture = None
        return end

    @property
    def headers(self) -> int:
        return sum(call.name is not None for call in self.calls)

    def _at_call_level(self) -> bool:
        return (bool(self._call_depth) and len(self._stack) == self._call_depth
                and self._stack[-1] == "{")

    def _open_string(self) -> None:
        self._in_str = True
        if self._at_call_level() and self._expect in ("key", "value"):
            self._capture = ['"']
        elif self._at_call_level():
            self._expect = "comma"

    def _string_done(self, literal: str, events: list[Event]) -> None:
        try:
            value = json.loads(literal)
        except ValueError:
            value = None
        if self._expect == "key":
            self._key, self._expect = value, "colon"
            return
        self._expect = "comma"
        call = self.calls[-1]
        if self._key == "name" and call.name is None and isinstance(value, str) and value:
            call.name = value
            events.append(("header", value))
            events.extend(("args", piece) for piece in call.pending)
            call.pending.clear()

    def _open(self, ch: str) -> bool:
        """Push a container; True when it is a call's arguments object."""
        if not self._stack and not self._call_depth:
            self._call_depth = 1 if ch == "{" else 2
        starts_args = (self._at_call_level() and self._expect == "value"
                       and self._key in ARGS_KEYS and ch == "{"
                       and not self.calls[-1].args and not self.calls[-1].args_done)
        if self._at_call_level():
            self._expect = "comma"
        self._stack.append(ch)
        if len(self._stack) == self._call_depth and ch == "{":
            self.calls.append(ScannedCall())
            self._expect, self._key = "key", None
        if starts_args:
            self._args_depth = len(self._stack)
        return starts_args

    def _close(self, ch: str, events: list[Event]) -> bool:
        """Pop a container; True when it closed the arguments object."""
        if not self._stack:
            return False
        closed_args = len(self._stack) == self._args_depth
        ends_call = len(self._stack) == self._call_depth and self._stack[-1] == "{"
        self._stack.pop()
        if closed_args:
            self._args_depth = 0
            self.calls[-1].args_done = True
        if ends_call:
            events.append(("end", ""))
        return closed_args

    def _punct(self, ch: str) -> None:
        if ch == ":" and self._expect == "colon":
            self._expect = "value"
        elif ch == ",":
            self._expect = "key"

    def _args(self, piece: str, events: list[Event]) -> None:
        if not piece:
            return
        call = self.calls[-1]
        call.args.append(piece)
        if call.name is None:
            call.pending.append(piece)
        else:
            events.append(("args", piece))
