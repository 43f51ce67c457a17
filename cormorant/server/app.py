"""The app factory: `build_app(engine, config)` composes routes, middleware and error handling.

The engine is an object passed in (anything shaped like server.engine_client.EngineClient),
never created or looked up here, so one process can build several apps or, later, hand a
registry in its place. The middleware order is decided in `_middleware` and nowhere else.
Imports fastapi, server modules, hosting's registry and the gateway's middleware and routes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from cormorant import __version__
from cormorant.gateway.auth.middleware import AuthMiddleware, build_authenticator
from cormorant.gateway.auth.routes import RouteTable
from cormorant.gateway.caching.response_cache import ResponseCache, ResponseCacheConfig
from cormorant.gateway.caching.semantic_cache import SemanticCache, SemanticCacheConfig
from cormorant.gateway.crypto import DataCipher
from cormorant.gateway.quotas.quotas import RateLimitHeaders
from cormorant.gateway.telemetry.metrics import metrics_router
from cormorant.gateway.telemetry.request_log import TelemetryMiddleware
from cormorant.gateway.telemetry.usage import usage_router
from cormorant.hosting.registry import ModelSpec, Registry
from cormorant.server import (route_admin, route_batches, route_chat, route_classify,
                              route_completions, route_detokenize, route_drift, route_embeddings,
                              route_files, route_health, route_models, route_ready,
                              route_responses, route_tokenize, route_web)
from cormorant.server.batch_jobs import BatchJobs
from cormorant.server.config import ServerConfig
from cormorant.server.embedding_protocol import EncoderLike
from cormorant.server.engine_client import EngineClient
from cormorant.server.errors import install_error_handlers
from cormorant.server.middleware import LimitsMiddleware, RequestIdMiddleware
from cormorant.server.openapi import install_openapi
from cormorant.server.state import RawLoader, ServerState

FIXED_SOURCE = "fixed:"  # a model handed to build_app: it cannot be reloaded from anywhere

ROUTERS = (route_admin, route_drift, route_completions, route_chat, route_responses, route_models,
           route_tokenize, route_detokenize,
           route_health, route_ready, route_embeddings, route_classify,
           route_files, route_batches,
           route_web)  # route_web: the playground and console pages (public shells, no data)


def _middleware(state: ServerState) -> list[tuple[type, dict]]:
    """Outermost first. The request id wraps everything so that every response, even a
    413 or 401 decided further in, carries it; size limits run before authentication so an
    unauthenticated client cannot make us read a huge body; auth guards the routes.
    Telemetry (request log, usage, HTTP metrics) sits just inside the request id and outside
    everything that can refuse, so refusals are logged and counted too. Later: quotas inside
    auth."""
    cfg = state.config
    stack: list[tuple[type, dict]] = [
        (RequestIdMiddleware, {}),
        (TelemetryMiddleware, {"telemetry": state.telemetry}),
        (LimitsMiddleware, {"config": cfg}),
    ]
    # Always mounted: with no key configured it still enforces the route table (unknown and
    # non-canonical paths are 404) and puts the anonymous principal on every request.
    authenticator = build_authenticator(cfg.api_key, cfg.keys_db, cfg.keys_file,
                                        cfg.keys_refresh_s)
    stack.append((AuthMiddleware, {"authenticator": authenticator,
                                   "routes": RouteTable(metrics_public=cfg.metrics_public)}))
    # Inside auth: it reads the caller's principal to put x-ratelimit headers on responses.
    stack.append((RateLimitHeaders, {"quotas": state.quotas,
                                     "defaults": state.quota_defaults}))
    return stack


def build_app(engine: EngineClient | None = None, config: ServerConfig | None = None,
              encoders: Sequence[EncoderLike] = (), *, registry: Registry | None = None,
              loaded: dict[str, tuple[Any, str]] | None = None,
              loader: RawLoader | None = None) -> FastAPI:
    """Either one engine (and encoders beside it, by model_name), or a model registry with
    the models already built (`loaded`: id -> (object, weights digest)) and a loader for
    the rest (hosting.loader)."""
    config = config or ServerConfig()
    if registry is None:
        registry, loaded = fixed_registry(engine, config, encoders)
    state = ServerState(registry, config, loaded, loader)
    _install_caches(state, config)
    state.batch_jobs = BatchJobs(state, config)  # /v1/files and /v1/batches
    route_drift.install(state)
    app = FastAPI(title="cormorant", version=__version__, lifespan=state.lifespan,
                  description="OpenAI-compatible API of the cormorant inference engine.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.cormorant = state
    install_error_handlers(app, state.config.max_error_chars)
    for module in ROUTERS:
        app.include_router(module.router)
    app.include_router(metrics_router(state.telemetry.metrics))  # GET /metrics
    app.include_router(usage_router(state.telemetry.usage))  # GET /v1/usage (admin scope)
    install_openapi(app)
    # add_middleware puts each new one outside the previous: add innermost first.
    for cls, kwargs in reversed(_middleware(state)):
        app.add_middleware(cls, **kwargs)
    return app


def fixed_registry(engine: EngineClient | None, config: ServerConfig,
                   encoders: Sequence[EncoderLike]) -> tuple[Registry, dict]:
    """A registry of exactly the objects given (nothing loads on demand)."""
    registry, loaded = Registry(), {}
    if engine is not None:
        spec = ModelSpec(name=config.served_model_name or engine.model_name, version="",
                         source=FIXED_SOURCE)
        registry.add(spec)
        loaded[spec.id] = (engine, config.model_version)
    for encoder in encoders:
        spec = ModelSpec(name=encoder.model_name, version="", source=FIXED_SOURCE,
                         kind="embed")
        registry.add(spec)
        loaded[spec.id] = (encoder, "")
    if not registry.specs:
        raise ValueError("build_app needs an engine, an encoder or a registry")
    return registry, loaded


def _install_caches(state: ServerState, config: ServerConfig) -> None:
    if config.response_cache:
        state.response_cache = ResponseCache(ResponseCacheConfig(
            ttl_s=config.response_cache_ttl_s, max_entries=config.response_cache_max_entries,
            redis_url=config.response_cache_redis_url), cipher=DataCipher(config.data_key))
    if config.semantic_cache_model:
        state.semantic_cache = SemanticCache(SemanticCacheConfig(
            threshold=config.semantic_cache_threshold,
            max_entries=config.response_cache_max_entries, ttl_s=config.response_cache_ttl_s))
