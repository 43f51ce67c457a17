"""ServerState: what every route needs, built once per app and reached via request.app.state.

It holds the model pool (hosting.pool: the registry's models, loaded ones wrapped as
hosting.served objects), lifecycle, quotas, the tokenization pool, the response cache and the
telemetry with the engine watchdog. `acquire` is the one place a request's `model` becomes a
served model version: routed by the registry (aliases, canary splits sticky per `user`),
checked against the caller's key, loaded on demand. Its Lease is released when the response
is over, which is what lets a swapped-out version drain.
Imports server modules, hosting and the gateway; never the engine implementation.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from starlette.requests import Request

from cormorant.engine.messages import EngineStats
from cormorant.gateway.auth.middleware import current_principal
from cormorant.gateway.quotas.quotas import Quotas
from cormorant.gateway.quotas.redis_store import RedisStore
from cormorant.gateway.quotas.store import MemoryStore
from cormorant.gateway.telemetry.drift import DriftConfig
from cormorant.gateway.telemetry.request_log import build_telemetry
from cormorant.gateway.telemetry.response_store import ResponseStore
from cormorant.hosting.pool import Deployment, Lease, LoadError, ModelNotFound, ModelPool
from cormorant.hosting.registry import ModelSpec, Registry
from cormorant.hosting.served import ServedEncoder, ServedGenerator, combined_stats
from cormorant.server.body import read_request
from cormorant.server.config import ServerConfig
from cormorant.server.errors import APIError, bound
from cormorant.server.lifecycle import Lifecycle
from cormorant.server.logprobs import TokenText
from cormorant.server.request_admission import Admission, quota_defaults
from cormorant.server.watchdog import Watchdog

logger = logging.getLogger("cormorant.server")

# (spec, resolved source) -> (engine or encoder object, weights digest). Blocking; a thread.
RawLoader = Callable[[ModelSpec, "Path | str"], tuple[Any, str]]
METRICS_TOKEN_BUCKET_MAX = 1 << 17  # histogram buckets of token counts go up to here
IDLE_CHECK_S = 5.0
MAX_LISTED = 32  # models a 404 names


def _no_loader(spec: ModelSpec, source: Path | str) -> tuple[Any, str]:
    raise LoadError(f"this server was built with fixed models; {spec.id} cannot be loaded")


class ServerState:
    def __init__(self, registry: Registry, config: ServerConfig,
                 loaded: dict[str, tuple[Any, str]] | None = None,
                 loader: RawLoader | None = None) -> None:
        """loaded: model id -> (engine or encoder, digest) built before the app (these are
        warmed in the lifespan); loader: builds the others on demand."""
        self.config = config
        self.telemetry = build_telemetry(METRICS_TOKEN_BUCKET_MAX, usage_db=config.usage_db,
                                         otlp_endpoint=config.otlp_endpoint,
                                         log_prompts=config.log_prompts,
                                         drift=drift_config(config))
        self.created = int(time.time())
        # Responses API conversations (previous_response_id), beside the usage rows.
        self.responses = ResponseStore(config.usage_db)
        self.lifecycle = Lifecycle(config)
        # Quota counters: shared through Redis by every process given the same URL.
        self.quotas = Quotas(RedisStore.from_url(config.redis_url) if config.redis_url
                             else MemoryStore())
        self.quota_defaults = quota_defaults(config)
        raw_loader = loader or _no_loader
        self.pool = ModelPool(registry, lambda spec, source, _instance:
                              self.wrap(spec, *raw_loader(spec, source)))
        for model_id, (obj, digest) in (loaded or {}).items():
            spec = registry.specs[model_id]
            self.pool.deployments[model_id] = Deployment(spec, self.wrap(spec, obj, digest),
                                                         instance=f"{model_id}:{id(obj):x}")
        self.response_cache: Any = None  # set by server.app when configured
        self.semantic_cache: Any = None
        self.batch_jobs: Any = None  # server.batch_jobs.BatchJobs, set by server.app
        self.tokenize_pool = ThreadPoolExecutor(max_workers=2,
                                                thread_name_prefix="cormorant-tokenize")
        # Passed to request validation: config-driven bounds run before items are validated;
        # max_tokens is bounded per model after routing.
        self.validation_context = {"config": config, "max_tokens": 1 << 20}
        self._tasks: list[asyncio.Task] = []

    def wrap(self, spec: ModelSpec, obj: Any, digest: str) -> ServedGenerator | ServedEncoder:
        """A loaded model as the pool holds it, with the server's own per-model state."""
        if spec.kind == "embed":
            return ServedEncoder(spec, obj, digest)
        served = ServedGenerator(spec, obj, digest, self.telemetry)
        limits = {k: v for k, v in spec.limits.items() if hasattr(self.config, k)}
        served.admission = Admission(dataclasses.replace(self.config, **limits), obj.stats,
                                     self.quotas, served.block_size)
        served.token_text = TokenText(obj.tokenizer)
        return served

    # --- models ------------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        return self.pool.registry

    @property
    def default_model(self) -> str:
        """What a request without `model` gets: the first registered model's name."""
        return next(iter(self.registry.specs.values())).name

    def generators(self) -> list[ServedGenerator]:
        return [d.served for d in self.pool.deployments.values() if d.spec.kind == "generate"]

    def stats(self) -> EngineStats:
        return combined_stats([g.engine for g in self.generators()])

    def candidates(self, name: str | None, user: str | None
                   ) -> list[tuple[str, str | None]]:
        """(name, model id or None) to try for a request: its own model, routed once here (a
        split picks one version, whose fallbacks follow), then those fallbacks (routed when
        tried)."""
        name = name or self.default_model
        model_id = self.registry.route(name, user)
        spec = self.registry.specs.get(model_id) if model_id else None
        return [(name, model_id), *((f, None) for f in (spec.fallbacks if spec else ()))]

    async def acquire(self, name: str | None, user: str | None = None,
                      kind: str = "generate", model_id: str | None = None) -> Lease:
        """A lease on the model version that answers `name` for this caller (or an APIError:
        404 unknown or not allowed, 400 wrong kind, 503 could not be loaded). model_id: the
        version `name` was already routed to (see candidates)."""
        name = name or self.default_model
        model_id = model_id or self.registry.route(name, user)
        spec = self.registry.specs.get(model_id) if model_id else None
        principal = current_principal()  # the request's, set by gateway.auth.middleware
        allowed = spec is not None and (principal is None or any(
            principal.may_use_model(n) for n in {name, spec.name, spec.id}))
        if not allowed:
            raise _not_found(name, self.usable_models(principal))
        if spec.kind != kind:
            what = "an embedding model" if spec.kind == "embed" else "a generation model"
            raise APIError(400, f"The model '{bound(name, 128)}' is {what}; it cannot serve "
                           "this endpoint.", param="model", code="model_not_supported")
        try:
            return await self.pool.acquire_id(spec.id)
        except ModelNotFound:
            raise _not_found(name, self.usable_models(principal)) from None
        except LoadError as exc:
            raise APIError(503, f"The model '{bound(name, 128)}' is not available: {exc}",
                           code="model_unavailable",
                           headers={"retry-after": str(self.config.retry_after_s)}) from None

    def usable_models(self, principal: Any) -> list[str]:
        """The model names and aliases this caller may ask for (a key limited to some models
        learns of those only)."""
        served = {s.name for s in self.registry.specs.values()} | set(self.registry.aliases)
        allowed = getattr(principal, "allowed_models", None)
        if allowed is not None:
            served = (served | set(self.registry.specs)) & set(allowed)
        return sorted(served)

    # --- life --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _app) -> AsyncIterator[None]:
        self._tasks = [asyncio.ensure_future(self._warm_up()),
                       asyncio.ensure_future(self.lifecycle.watch_engines(
                           lambda: [g.engine for g in self.generators()])),
                       asyncio.ensure_future(self._expire_idle())]
        if self.batch_jobs is not None:
            self._tasks.append(self.batch_jobs.start())  # resumes unfinished batches
        watchdog = self._start_watchdog(asyncio.get_running_loop())
        try:
            yield
        finally:
            watchdog.stop()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.tokenize_pool.shutdown(wait=False, cancel_futures=True)
            if self.batch_jobs is not None:
                self.batch_jobs.close()
            self.telemetry.close()
            self.responses.close()
            await self.quotas.store.aclose()
            if self.response_cache is not None:
                await self.response_cache.aclose()

    async def _warm_up(self) -> None:
        await self.lifecycle.warm_up([d.served for d in self.pool.deployments.values()],
                                     names=list(self.pool.deployments))

    async def _expire_idle(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            try:
                await self.pool.expire_idle()
            except Exception:
                logger.exception("unloading idle models failed")

    def _start_watchdog(self, loop: asyncio.AbstractEventLoop) -> Watchdog:
        """Same stall threshold as /health; before exiting, in-flight requests get a 503 and
        usage records are written."""
        watchdog = Watchdog(self.stats, self.config.health_stall_s,
                            self.config.watchdog_exit_grace_s,
                            max_step_s=self.config.health_max_step_s)

        def fail_in_flight() -> None:
            err = APIError(503, "The engine stopped making progress; the server is restarting.",
                           code="engine_unavailable")
            loop.call_soon_threadsafe(self.lifecycle.fail_all, err)
            time.sleep(1.0)  # let the failed responses go out before the process ends

        watchdog.before_exit += [fail_in_flight, self.telemetry.close]
        return watchdog.start()


def drift_config(config: ServerConfig) -> DriftConfig | None:
    if not config.drift:
        return None
    return DriftConfig(window=config.drift_window, reference_size=config.drift_reference_size,
                       reference_file=config.drift_reference_file,
                       min_requests=config.drift_min_requests,
                       embed_every=config.drift_embedding_every)


def _not_found(name: str, usable: list[str]) -> APIError:
    # A key limited to other models gets the unknown model's 404, naming only the models it
    # may use: it learns nothing about what else is served.
    listed = ", ".join(usable[:MAX_LISTED]) + (", ..." if len(usable) > MAX_LISTED else "")
    return APIError(404, f"The model '{bound(name, 128)}' does not exist or you do not have "
                    f"access to it; served: {listed or 'none for this key'}.", param="model",
                    code="model_not_found")


def get_state(request: Request) -> ServerState:
    return request.app.state.cormorant


R = TypeVar("R")


@contextlib.asynccontextmanager
async def leased_request(request: Request, model_cls: type[R], kind: str = "generate"
                         ) -> AsyncIterator[tuple[ServerState, R, Any]]:
    """A route's start: (state, its validated body, the served model the body names), the
    lease on that model held inside the block (acquired for the body's `user`, if it has one)."""
    state = get_state(request)
    req = await read_request(request, model_cls, state.validation_context)
    async with await state.acquire(req.model, getattr(req, "user", None), kind) as deployment:
        yield state, req, deployment.served
