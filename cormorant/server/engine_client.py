"""The engine as the server sees it: a structural interface, nothing more.

The server is handed an object with this shape (today `cormorant.frontend.async_llm.AsyncLLM`;
later a model registry entry, an engine in another process or a remote replica). Keeping the
contract here, as a typing.Protocol, means no server module imports the engine implementation
and the app factory can be composed with whatever provides these members.
Imports only asyncio, typing, sampling_params, engine.messages (EngineStats) and frontend.outputs.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from cormorant.engine.messages import EngineStats
from cormorant.frontend.outputs import RequestOutput
from cormorant.sampling_params import SamplingParams


class TokenizerLike(Protocol):
    vocab_size: int
    eos_token_ids: Any

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **kwargs: Any) -> list[int]:
        """kwargs: `tools` and the whitelisted template switches (enable_thinking)."""
        ...


class RequestHandleLike(Protocol):
    """One engine request started by `add_request`: its index goes into the caller's queue
    each time it has news, which `take()` returns (raising if the engine died)."""
    request_id: str

    @property
    def finished(self) -> bool: ...

    def take(self) -> RequestOutput: ...

    def close(self) -> None:
        """Abort the request unless it finished; idempotent."""
        ...


class EngineClient(Protocol):
    tokenizer: TokenizerLike
    model_config: Any  # cormorant.config.ModelConfig
    max_model_len: int
    model_name: str

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    sink: asyncio.Queue, *, index: int = 0, tenant: str = "",
                    priority: int = 0, weight: float = 1.0, cache_salt: str = ""
                    ) -> RequestHandleLike:
        """tenant, priority, weight: the request's place in a fair waiting queue."""
        ...

    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 *, tenant: str = "", priority: int = 0, weight: float = 1.0,
                 cache_salt: str = "") -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def shutdown(self) -> None: ...
