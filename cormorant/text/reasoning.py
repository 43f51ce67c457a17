"""Reasoning output: Qwen3-style `<think>...</think>` split off as `reasoning_content`.

`split_reasoning(text)` for a whole output, `StreamingReasoningParser` for deltas (a tag split
over deltas is held back until it is whole). An output that does not open with `<think>` is all
content, unless the prompt itself opened the think block (`opened`: Qwen3-Thinking and
DeepSeek-R1 templates do), when the output is reasoning up to `</think>`. `reasoning_parser_for_template` turns the
feature on for templates that know the tags (auto-detection; `--reasoning-parser` overrides).
Imports only the standard library.
"""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
REASONING_PARSERS = ("qwen3",)


def reasoning_parser_for_template(chat_template: str | None) -> str | None:
    return "qwen3" if chat_template and CLOSE in chat_template else None


def split_reasoning(text: str, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning or None, content). opened: the prompt ended inside a think block."""
    if not opened:
        body = text.lstrip()
        if not body.startswith(OPEN):
            return None, text
        text = body[len(OPEN):]
    end = text.find(CLOSE)
    if end < 0:  # cut off while thinking
        return text.strip("\n"), ""
    return text[:end].strip("\n"), text[end + len(CLOSE):].lstrip("\n")


class StreamingReasoningParser:
    """feed(delta) -> (reasoning delta, content delta); both may be empty. Joined, the deltas
    give split_reasoning's answer (less the newlines that close the reasoning)."""

    def __init__(self, opened: bool = False) -> None:
        self._held = ""
        self._state = "thinking" if opened else "start"  # start -> thinking -> content
        self._strip_next = True  # newlines right after a tag are not text

    def feed(self, delta: str) -> tuple[str, str]:
        text = self._held + delta
        self._held = ""
        if self._state == "start":
            body = text.lstrip()
            if not body or (OPEN.startswith(body) and body != OPEN):
                self._held = text
                return "", ""
            if not body.startswith(OPEN):
                self._state = "content"
                self._strip_next = False
                return "", text
            self._state = "thinking"
            text = body[len(OPEN):]
        if self._state == "thinking":
            end = text.find(CLOSE)
            if end < 0:
                keep = _partial_len(text, CLOSE)
                self._held = text[len(text) - keep:]
                return self._lstrip(text[:len(text) - keep]), ""
            reasoning = self._lstrip(text[:end]).rstrip("\n")
            self._state, self._strip_next = "content", True
            return reasoning, self._lstrip(text[end + len(CLOSE):])
        return "", self._lstrip(text)

    def finish(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        if self._state == "start":
            return "", held
        return (held, "") if self._state == "thinking" else ("", held)

    def _lstrip(self, text: str) -> str:
        if self._strip_next:
            stripped = text.lstrip("\n")
            if stripped:
                self._strip_next = False
            return stripped
        return text


def _partial_len(text: str, marker: str) -> int:
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
