"""Prompts to token ids: completion prompts (text or ids, one or many) and chat messages.

Tokenization and chat templating never run on the event loop: they go to a small thread pool
(at most MAX_PENDING jobs queued per pool; past that a 503), never the engine loop's thread.
Before that, a text whose UTF-8 size alone proves it longer than the context is refused
without tokenizing it, so an oversized prompt costs no tokenizer time at all.
Token ids from the client are checked against the vocabulary before they reach the engine.
Imports server modules (protocol, errors, engine_client) and text's tool prompt helpers.
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from cormorant.server.engine_client import TokenizerLike
from cormorant.server.errors import APIError, bound
from cormorant.server.protocol import ChatMessage
from cormorant.text.tool_prompt import template_inputs

T = TypeVar("T")
MAX_PENDING = 256  # tokenize/template jobs waiting for one pool
# Normalisers (NFKC, composition) can shrink a text before it is split into tokens; no
# normaliser of a generation tokenizer shrinks it by more than this factor.
NORMALIZE_SLACK = 4
_pending: weakref.WeakKeyDictionary[Executor, int] = weakref.WeakKeyDictionary()


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None  # the client's text (for echo); None when it sent token ids


async def off_loop(executor: Executor, num_chars: int, fn: Callable[..., T], *args) -> T:
    """fn(*args) on the pool, always (num_chars: kept for the callers; every size goes)."""
    pending = _pending.get(executor, 0)
    if pending >= MAX_PENDING:
        raise APIError(503, "The server is busy tokenizing other requests; retry shortly.",
                       code="server_overloaded")
    _pending[executor] = pending + 1
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    finally:
        _pending[executor] -= 1


def min_tokens(text: str, tokenizer: TokenizerLike) -> int:
    """A lower bound of len(tokenizer.encode(text)) from the bytes alone (0: unknown)."""
    max_token_bytes = getattr(tokenizer, "max_token_bytes", None)
    if not isinstance(max_token_bytes, int) or max_token_bytes < 1:
        return 0
    per_token = max_token_bytes * NORMALIZE_SLACK
    if len(text) * 4 < per_token:  # UTF-8 takes at most 4 bytes a character
        return 0
    return len(text.encode("utf-8", "surrogatepass")) // per_token


def refuse_oversized(text: str, tokenizer: TokenizerLike, max_model_len: int,
                     param: str) -> None:
    """400 before tokenizing when the text's size alone proves it leaves no room to generate."""
    at_least = min_tokens(text, tokenizer)
    if at_least >= max_model_len:
        raise APIError(400, f"This model's maximum context length is {max_model_len} tokens. "
                       f"However, your {param} is {len(text)} characters long, which is "
                       f"at least {at_least} tokens. Please reduce the length of the "
                       f"{param}.", param=param, code="context_length_exceeded")


def check_token_ids(token_ids: list[int], vocab_size: int, param: str) -> list[int]:
    for position, token_id in enumerate(token_ids):
        if not 0 <= token_id < vocab_size:
            raise APIError(400, f"Token id {token_id} at position {position} is outside the "
                           f"vocabulary (0..{vocab_size - 1}).", param=param,
                           code="invalid_value")
    return token_ids


def _prompt_items(prompt: str | list) -> list:
    """The four OpenAI prompt shapes (already validated by protocol) as a list of prompts."""
    if isinstance(prompt, str) or all(isinstance(x, int) for x in prompt):
        return [prompt]
    return prompt


def count_prompts(prompt: str | list) -> int:
    return len(_prompt_items(prompt))


async def completion_prompts(prompt: str | list, tokenizer: TokenizerLike, vocab_size: int,
                             executor: Executor, max_model_len: int | None = None
                             ) -> list[Prompt]:
    """Each prompt as token ids: text tokenized, client ids checked against the vocabulary."""
    items = _prompt_items(prompt)
    out = []
    for i, item in enumerate(items):
        param = "prompt" if len(items) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
            if max_model_len is not None:
                refuse_oversized(item, tokenizer, max_model_len, param)
            ids = await off_loop(executor, len(item), tokenizer.encode, item)
            if not ids:
                raise APIError(400, "The prompt tokenizes to no tokens.", param=param,
                               code="invalid_value")
            out.append(Prompt(ids, item))
        else:
            out.append(Prompt(check_token_ids(list(item), vocab_size, param), None))
    return out


def _template_messages(messages: list[ChatMessage]) -> list[dict]:
    out = []
    for message in messages:
        # "developer" is OpenAI's newer name for the system role; templates know "system".
        entry: dict = {"role": "system" if message.role == "developer" else message.role,
                       "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_calls:  # the key only when there are calls: templates test `in`
            entry["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name,
                              "arguments": c.function.arguments}}
                for c in message.tool_calls]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        out.append(entry)
    return out


@dataclass
class ChatInputs:
    """What the template gets beside the messages."""
    tools: list[dict] | None = None
    template_kwargs: dict = field(default_factory=dict)


def template_entries(messages: list[ChatMessage], tokenizer: TokenizerLike,
                     inputs: ChatInputs) -> tuple[list[dict], dict]:
    """Messages and keyword arguments for the template; tools written into the messages
    for templates that do not render them (text.tool_prompt)."""
    return template_inputs(_template_messages(messages), inputs.tools,
                           getattr(tokenizer, "chat_template", None), inputs.template_kwargs)


async def chat_prompt(messages: list[ChatMessage], tokenizer: TokenizerLike,
                      executor: Executor, add_generation_prompt: bool = True,
                      max_model_len: int | None = None, inputs: ChatInputs | None = None
                      ) -> Prompt:
    entries, kwargs = template_entries(messages, tokenizer, inputs or ChatInputs())
    num_chars = sum(len(entry["content"]) for entry in entries)
    if max_model_len is not None:  # the template only adds text: the contents are a bound
        refuse_oversized("".join(entry["content"] for entry in entries), tokenizer,
                         max_model_len, "messages")
    try:
        ids = await off_loop(executor, num_chars, partial(
            tokenizer.apply_chat_template, entries, add_generation_prompt, **kwargs))
    except Exception as exc:  # jinja raises what the template author chose; all are input errors
        raise APIError(400, f"The messages could not be rendered with the model's chat "
                       f"template: {bound(exc, 200)}", param="messages",
                       code="invalid_value") from None
    if not ids:
        raise APIError(400, "The messages render to no tokens.", param="messages",
                       code="invalid_value")
    return Prompt(list(ids), None)
