"""Incremental detokenization: turn a growing list of token ids into text deltas, per sequence.

The prefix-window algorithm of vLLM / HF TGI: keep two offsets into the ids, `prefix_offset`
(start of a small context window) and `read_offset` (end of the text already emitted). Each
step decodes `ids[prefix_offset:read_offset]` and `ids[prefix_offset:]`; the delta is what the
second adds to the first. Decoding with a little left context is what gets SentencePiece
spaces right ("▁Paris" after other tokens is " Paris", alone it is "Paris"), and it keeps each
step O(window), not O(length).

A delta is held back while the window's text ends in U+FFFD: byte-level BPE and byte-fallback
tokens can split one UTF-8 character across tokens, and the replacement character then only
means "more bytes to come". `flush()` flushes whatever is still held (a sequence that really
ends in a broken character ends in U+FFFD, as the full decode does).

Invariant (tests check it): with no prompt, ''.join(deltas) + flush() == decode(all ids).
One known exception, shared with vLLM: tokenizers' ByteFallback decoder turns a whole run of
<0xNN> tokens into U+FFFD when the run is invalid UTF-8, so valid characters already streamed
from the start of such a run (followed by garbage bytes in the same run) differ from the full
decode. Matching it would mean holding back every byte run, i.e. all CJK text on Llama-2-style
vocabularies; a model emitting invalid bytes is not worth that latency.

Imports: text.tokenizer (for the type) only.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cormorant.text.tokenizer import Tokenizer

_REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens kept as left context for the first generated token (vLLM uses 5 too): enough
# for a SentencePiece "▁" or a multi-token character, small enough to decode for free.
INITIAL_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Text deltas for one sequence. Not thread-safe; one per generated sequence."""

    __slots__ = ("_decode", "_skip_special", "_ids", "_prefix_offset", "_read_offset",
                 "_prefix_text", "_parts")

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> None:
        self._decode = tokenizer.decode
        self._skip_special = skip_special_tokens
        # Only the prompt's tail matters as context; the rest of the prompt is never decoded.
        self._ids: list[int] = list(prompt_ids[-INITIAL_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._prefix_text: str | None = None  # cache: decode of ids[prefix:read]
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._parts)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens fed whose text has not been emitted yet (held back)."""
        return len(self._ids) - self._read_offset

    def add(self, new_token_ids: Iterable[int]) -> str:
        """Append generated ids; return the text they complete ('' while held back)."""
        self._ids.extend(new_token_ids)
        return self._step(final=False)

    def flush(self) -> str:
        """At the end of generation: the text still held back. A sequence that really ends
        mid-character ends in U+FFFD, as its full decode does."""
        return self._step(final=True)

    def _step(self, final: bool) -> str:
        if len(self._ids) == self._read_offset:
            return ""
        prefix_text = self._window_prefix_text()
        new_text = self._decode(self._ids[self._prefix_offset:], self._skip_special)
        # Nothing new (e.g. a skipped special token), or a character still incomplete: wait.
        # The offsets stay put, so the window keeps its left context for the next step.
        if len(new_text) <= len(prefix_text):
            return ""
        if not final and new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        return self._emit(new_text[len(prefix_text):])

    def _window_prefix_text(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(
                self._ids[self._prefix_offset:self._read_offset], self._skip_special)
        return self._prefix_text

    def _emit(self, delta: str) -> str:
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = None
        # Tokens before the window are never decoded again; drop them so memory and slicing
        # stay O(window) however long the sequence grows.
        if self._prefix_offset > 0:
            del self._ids[:self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        self._parts.append(delta)
        return delta
