"""Logprobs in the two OpenAI shapes: legacy completions and chat.

Completions: parallel lists plus text offsets; chat: a list of {token, logprob, bytes,
top_logprobs}.
Token strings come from decoding one id at a time (cached: the vocabulary is finite). A token
that is only part of a UTF-8 character decodes to U+FFFD; `bytes` then reflects the
replacement, not the raw byte (see the note to the engine side in the report). -inf and NaN
become -9999.0 because JSON has no infinity and clients choke on it.
Imports frontend.outputs and server.engine_client (types only).
"""
from __future__ import annotations

import math

from cormorant.frontend.outputs import TokenLogprob
from cormorant.server.engine_client import TokenizerLike

FLOOR = -9999.0


def clean(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else FLOOR


class TokenText:
    """id -> the text of that token alone, special tokens included."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            self._cache[token_id] = text
        return text


def _top(entry: TokenLogprob, k: int) -> list[tuple[int, float]]:
    if k <= 0 or not entry.top:
        return []
    return sorted(entry.top.items(), key=lambda item: -item[1])[:k]


def completion_logprobs(entries: list[TokenLogprob | None], token_ids: list[int],
                        token_text: TokenText, k: int, offset: int) -> tuple[dict, int]:
    """Legacy shape for `token_ids` (entries aligned with them; None for the first prompt
    position). Returns it and the text offset just past the last token."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for token_id, entry in zip(token_ids, entries):
        text = token_text(token_id)
        tokens.append(text)
        text_offset.append(offset)
        offset += len(text)
        if entry is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs.append(clean(entry.logprob))
        top: dict[str, float] = {}
        for top_id, logprob in _top(entry, k):
            # Two ids can decode to the same text; keep the likelier.
            top.setdefault(token_text(top_id), clean(logprob))
        top_logprobs.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}, offset


def _chat_entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": clean(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(entries: list[TokenLogprob], token_text: TokenText, k: int) -> dict:
    content = []
    for entry in entries:
        item = _chat_entry(token_text(entry.token_id), entry.logprob)
        item["top_logprobs"] = [_chat_entry(token_text(top_id), logprob)
                                for top_id, logprob in _top(entry, k)]
        content.append(item)
    return {"content": content, "refusal": None}
