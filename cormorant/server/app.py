"""The app factory: `build_app(engine, config)` composes routes, middleware and error handling.

The engine is an object passed in (anything shaped like server.engine_client.EngineClient),
never created or looked up here, so one process can build several apps or, later, hand a
registry in its place. The middleware order is decided in `_middleware` and nowhere else.
Imports fastapi and server modules only.
"""
from __future__ import annotations

from fastapi import FastAPI

from cormorant import __version__
from cormorant.server import (route_chat, route_completions, route_detokenize, route_health,
                              route_models, route_ready, route_tokenize)
from cormorant.server.auth import APIKeyMiddleware
from cormorant.server.config import ServerConfig
from cormorant.server.engine_client import EngineClient
from cormorant.server.errors import install_error_handlers
from cormorant.server.middleware import LimitsMiddleware, RequestIdMiddleware
from cormorant.server.openapi import install_openapi
from cormorant.server.state import ServerState

ROUTERS = (route_completions, route_chat, route_models, route_tokenize, route_detokenize,
           route_health, route_ready)


def _middleware(state: ServerState) -> list[tuple[type, dict]]:
    """Outermost first. The request id wraps everything so that every response, even a
    413 or 401 decided further in, carries it; size limits run before authentication so an
    unauthenticated client cannot make us read a huge body; auth guards the routes.
    Later: metrics outside auth, quotas inside it."""
    cfg = state.config
    stack: list[tuple[type, dict]] = [
        (RequestIdMiddleware, {"static_headers": {"x-system-fingerprint": state.fingerprint}}),
        (LimitsMiddleware, {"config": cfg}),
    ]
    if cfg.api_key:
        stack.append((APIKeyMiddleware, {"api_key": cfg.api_key,
                                         "max_error_chars": cfg.max_error_chars}))
    return stack


def build_app(engine: EngineClient, config: ServerConfig | None = None) -> FastAPI:
    state = ServerState(engine, config or ServerConfig())
    app = FastAPI(title="cormorant", version=__version__, lifespan=state.lifespan,
                  description="OpenAI-compatible API of the cormorant inference engine.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.cormorant = state
    install_error_handlers(app, state.config.max_error_chars)
    for module in ROUTERS:
        app.include_router(module.router)
    install_openapi(app)
    # add_middleware puts each new one outside the previous: add innermost first.
    for cls, kwargs in reversed(_middleware(state)):
        app.add_middleware(cls, **kwargs)
    return app
