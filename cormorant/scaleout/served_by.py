"""Which ingress replica answered: every ingress response carries `x-cormorant-ingress`.

Serve's HTTP proxy picks an ingress replica per request; with several of them an operator
(or a test) reads this header to tell them apart, e.g. to see that a response cached through
one replica is served from the shared Redis by another. The value is the replica's Serve id
(a short random string), nothing secret. The middleware wraps the whole app, so errors (401,
429, 503 cold start) carry it too.
"""
from __future__ import annotations

from ray import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

INGRESS_HEADER = "x-cormorant-ingress"


class ServedByMiddleware:
    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        self.app = app
        self.value = replica_id.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((INGRESS_HEADER.encode("latin-1"), self.value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def install_served_by(app: Starlette) -> None:
    """Wrap an ingress replica's whole app (called in `__serve_build_asgi_app__`)."""
    replica_id = serve.get_replica_context().replica_id.unique_id
    app.user_middleware.insert(0, Middleware(ServedByMiddleware, replica_id=replica_id))
