"""ServerState: what every route needs, built once per app and reached via request.app.state.

It holds the engine the app was given, the served model name and fingerprint, admission and
lifecycle, the tokenization pool and the token-text cache. `resolve_model` is the one place a
request's `model` becomes an engine: a registry of several models replaces it later.
Imports server modules and the package version; never the engine implementation.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request

from cormorant import __version__
from cormorant.server.admission import Admission
from cormorant.server.config import ServerConfig
from cormorant.server.engine_client import EngineClient, vocab_size_of
from cormorant.server.errors import APIError, bound
from cormorant.server.lifecycle import Lifecycle
from cormorant.server.logprobs import TokenText


def make_fingerprint(model_name: str, model_version: str) -> str:
    """Names the model, its version and the server build; safe to put in a header."""
    text = f"{model_name}:{model_version or 'unversioned'}:cormorant-{__version__}"
    return "".join(ch if 0x20 < ord(ch) < 0x7F else "_" for ch in text)


class ServerState:
    def __init__(self, engine: EngineClient, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.model_name = config.served_model_name or engine.model_name
        self.fingerprint = make_fingerprint(self.model_name, config.model_version)
        self.created = int(time.time())
        self.vocab_size = vocab_size_of(engine)
        self.lifecycle = Lifecycle(config)
        self.admission = Admission(config, engine.stats)
        self.token_text = TokenText(engine.tokenizer)
        self.tokenize_pool = ThreadPoolExecutor(max_workers=2,
                                                thread_name_prefix="cormorant-tokenize")
        # Passed to request validation: config-driven bounds run before items are validated.
        self.validation_context = {"config": config, "max_tokens": engine.max_model_len}
        self._tasks: list[asyncio.Task] = []

    def resolve_model(self, name: str | None) -> EngineClient:
        if name is None or name == self.model_name:
            return self.engine
        raise APIError(404, f"The model '{bound(name, 128)}' does not exist.", param="model",
                       code="model_not_found")

    @contextlib.asynccontextmanager
    async def lifespan(self, _app) -> AsyncIterator[None]:
        self._tasks = [asyncio.ensure_future(self.lifecycle.warm_up(self.engine)),
                       asyncio.ensure_future(self.lifecycle.watch_engine(self.engine))]
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.tokenize_pool.shutdown(wait=False, cancel_futures=True)


def get_state(request: Request) -> ServerState:
    return request.app.state.cormorant
