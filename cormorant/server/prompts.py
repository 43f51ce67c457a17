"""Prompts to token ids: completion prompts (text or ids, one or many) and chat messages.

Tokenization and chat templating run on a small thread pool when the input is long, so a
megabyte prompt never stalls the event loop (and never touches the engine loop's thread);
short inputs are tokenized inline because the thread hop would cost more than the work.
Token ids from the client are checked against the vocabulary before they reach the engine.
Imports server modules (protocol, errors, engine_client).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from cormorant.server.engine_client import TokenizerLike
from cormorant.server.errors import APIError, bound
from cormorant.server.protocol import ChatMessage

T = TypeVar("T")
INLINE_CHARS = 2048


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None  # the client's text (for echo); None when it sent token ids


async def off_loop(executor: Executor, num_chars: int, fn: Callable[..., T], *args) -> T:
    if num_chars <= INLINE_CHARS:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


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
                             executor: Executor) -> list[Prompt]:
    """Each prompt as token ids: text tokenized, client ids checked against the vocabulary."""
    items = _prompt_items(prompt)
    out = []
    for i, item in enumerate(items):
        param = "prompt" if len(items) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
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
        entry = {"role": "system" if message.role == "developer" else message.role,
                 "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        out.append(entry)
    return out


async def chat_prompt(messages: list[ChatMessage], tokenizer: TokenizerLike,
                      executor: Executor, add_generation_prompt: bool = True) -> Prompt:
    entries = _template_messages(messages)
    num_chars = sum(len(entry["content"]) for entry in entries)
    try:
        ids = await off_loop(executor, num_chars, tokenizer.apply_chat_template, entries,
                             add_generation_prompt)
    except Exception as exc:  # jinja raises what the template author chose; all are input errors
        raise APIError(400, f"The messages could not be rendered with the model's chat "
                       f"template: {bound(exc, 200)}", param="messages",
                       code="invalid_value") from None
    if not ids:
        raise APIError(400, "The messages render to no tokens.", param="messages",
                       code="invalid_value")
    return Prompt(list(ids), None)
