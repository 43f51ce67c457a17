"""The app factory: `build_app(engine, config)` composes routes, middleware and error handling.

The engine is an object passed in (anything shaped like server.engine_client.EngineClient),
never created or looked up here, so one process can build several apps or, later, hand a
registry in its place. The middleware order is decided in `_middleware` and nowhere else.
Imports fastapi, server modules and the gateway's auth and telemetry (middleware and routes).
"""
from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from cormorant import __version__
from cormorant.gateway.auth import AuthMiddleware, build_authenticator
from cormorant.gateway.metrics import metrics_router
from cormorant.gateway.quotas import RateLimitHeaders
from cormorant.gateway.request_log import TelemetryMiddleware
from cormorant.gateway.routes import RouteTable
from cormorant.gateway.usage import usage_router
from cormorant.server import (route_chat, route_classify, route_completions, route_detokenize,
                              route_embeddings, route_health, route_models, route_ready,
                              route_tokenize)
from cormorant.server.config import ServerConfig
from cormorant.server.embedding_protocol import EncoderLike
from cormorant.server.engine_client import EngineClient
from cormorant.server.errors import install_error_handlers
from cormorant.server.middleware import LimitsMiddleware, RequestIdMiddleware
from cormorant.server.openapi import install_openapi
from cormorant.server.state import ServerState

ROUTERS = (route_completions, route_chat, route_models, route_tokenize, route_detokenize,
           route_health, route_ready, route_embeddings, route_classify)


def _middleware(state: ServerState) -> list[tuple[type, dict]]:
    """Outermost first. The request id wraps everything so that every response, even a
    413 or 401 decided further in, carries it; size limits run before authentication so an
    unauthenticated client cannot make us read a huge body; auth guards the routes.
    Telemetry (request log, usage, HTTP metrics) sits just inside the request id and outside
    everything that can refuse, so refusals are logged and counted too. Later: quotas inside
    auth."""
    cfg = state.config
    stack: list[tuple[type, dict]] = [
        (RequestIdMiddleware, {"static_headers": {"x-system-fingerprint": state.fingerprint}}),
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
                                     "defaults": state.admission.defaults}))
    return stack


def build_app(engine: EngineClient, config: ServerConfig | None = None,
              encoders: Sequence[EncoderLike] = ()) -> FastAPI:
    """encoders: embedding / classification models served beside `engine`, by model_name."""
    state = ServerState(engine, config or ServerConfig())
    app = FastAPI(title="cormorant", version=__version__, lifespan=state.lifespan,
                  description="OpenAI-compatible API of the cormorant inference engine.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.cormorant = state
    app.state.encoders = {encoder.model_name: encoder for encoder in encoders}
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
