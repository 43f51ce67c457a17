"""ServerState: what every route needs, built once per app and reached via request.app.state.

It holds the engine the app was given, the served model name and fingerprint, admission and
lifecycle, the tokenization pool, the token-text cache and the telemetry (metrics, usage,
request log, tracing; the engine it holds is wrapped to feed them) with the engine watchdog.
`resolve_model` is the one place a request's `model` becomes an engine: a registry of several
models replaces it later.
Imports server modules, gateway telemetry and the package version; never the engine
implementation.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request

from cormorant import __version__
from cormorant.gateway.auth import current_principal
from cormorant.gateway.request_log import build_telemetry
from cormorant.gateway.watchdog import Watchdog
from cormorant.gateway.quotas import Quotas
from cormorant.gateway.redis_store import RedisStore
from cormorant.gateway.store import MemoryStore
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
        self.config = config
        self.model_name = config.served_model_name or engine.model_name
        self.telemetry = build_telemetry(
            self.model_name, config.model_version, engine.max_model_len,
            usage_db=config.usage_db, otlp_endpoint=config.otlp_endpoint,
            log_prompts=config.log_prompts)
        self.engine: EngineClient = self.telemetry.instrument(engine)
        self.fingerprint = make_fingerprint(self.model_name, config.model_version)
        self.created = int(time.time())
        self.vocab_size = vocab_size_of(engine)
        self.lifecycle = Lifecycle(config)
        # Quota counters: shared through Redis by every process given the same URL.
        self.quotas = Quotas(RedisStore.from_url(config.redis_url) if config.redis_url
                             else MemoryStore())
        self.admission = Admission(config, engine.stats, self.quotas, _block_size(engine))
        self.token_text = TokenText(engine.tokenizer)
        self.tokenize_pool = ThreadPoolExecutor(max_workers=2,
                                                thread_name_prefix="cormorant-tokenize")
        # Passed to request validation: config-driven bounds run before items are validated.
        self.validation_context = {"config": config, "max_tokens": engine.max_model_len}
        self._tasks: list[asyncio.Task] = []

    def resolve_model(self, name: str | None) -> EngineClient:
        # A key limited to other models gets the unknown model's 404: it learns nothing about
        # what else is served. The caller is the request's, set by gateway.auth.
        principal = current_principal()
        is_allowed = principal is None or principal.may_use_model(name or self.model_name)
        if is_allowed and (name is None or name == self.model_name):
            return self.engine
        raise APIError(404, f"The model '{bound(name or self.model_name, 128)}' does not exist "
                       "or you do not have access to it.", param="model", code="model_not_found")

    @contextlib.asynccontextmanager
    async def lifespan(self, _app) -> AsyncIterator[None]:
        self._tasks = [asyncio.ensure_future(self.lifecycle.warm_up(self.engine)),
                       asyncio.ensure_future(self.lifecycle.watch_engine(self.engine))]
        watchdog = self._start_watchdog(asyncio.get_running_loop())
        try:
            yield
        finally:
            watchdog.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.tokenize_pool.shutdown(wait=False, cancel_futures=True)
            self.telemetry.close()
            await self.quotas.store.aclose()

    def _start_watchdog(self, loop: asyncio.AbstractEventLoop) -> Watchdog:
        """Same stall threshold as /health; before exiting, in-flight requests get a 503 and
        usage records are written."""
        watchdog = Watchdog(self.engine.stats, self.config.health_stall_s,
                            self.config.watchdog_exit_grace_s)

        def fail_in_flight() -> None:
            err = APIError(503, "The engine stopped making progress; the server is restarting.",
                           code="engine_unavailable")
            loop.call_soon_threadsafe(self.lifecycle.fail_all, err)
            time.sleep(1.0)  # let the failed responses go out before the process ends

        watchdog.before_exit += [fail_in_flight, self.telemetry.close]
        return watchdog.start()


def _block_size(engine: EngineClient) -> int:
    """The KV block size, for admission's block estimates (engines without one: 16)."""
    cache = getattr(getattr(engine, "config", None), "cache", None)
    return int(getattr(cache, "block_size", 16))


def get_state(request: Request) -> ServerState:
    return request.app.state.cormorant
