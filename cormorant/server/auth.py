"""API-key check as pure-ASGI middleware: `Authorization: Bearer <key>` on every route but the
probes. One static key today; scoped multi-key auth replaces this module from gateway/ later,
behind the same place in the middleware order. Imports starlette types and server.errors.
"""
from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from cormorant.server.errors import APIError, error_response
from cormorant.server.middleware import header

# Probes must work without credentials (orchestrators do not hold keys); the schema is public.
EXEMPT_PATHS = frozenset({"/health", "/ready", "/openapi.json"})


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str, max_error_chars: int) -> None:
        self.app = app
        self.api_key = api_key.encode()
        self.max_error_chars = max_error_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        err = self._check(header(scope, b"authorization"))
        if err is not None:
            await error_response(err, self.max_error_chars)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, value: bytes | None) -> APIError | None:
        if not value:
            return APIError(401, "You didn't provide an API key. Send it in the Authorization "
                            "header as 'Bearer YOUR_KEY'.", code="missing_api_key",
                            type="invalid_request_error")
        scheme, _, token = value.partition(b" ")
        # compare_digest: the time taken must not reveal how much of the key matched.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
            return APIError(401, "Incorrect API key provided.", code="invalid_api_key",
                            type="invalid_request_error")
        return None
