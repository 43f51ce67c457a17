"""Pure-ASGI middleware of the HTTP layer; the order they wrap the app is decided in server.app.

No BaseHTTPMiddleware: it would buffer streams and hide client disconnects.
- RequestIdMiddleware: every response carries x-request-id (the client's when it sent a sane
  one) plus static identity headers such as x-system-fingerprint.
- LimitsMiddleware: header count and size (431), body size (413) before the body is read when
  Content-Length says so, and while it is read otherwise.
Imports starlette types, server.config and server.errors.
"""
from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cormorant.server.config import ServerConfig
from cormorant.server.errors import APIError, error_response

MAX_REQUEST_ID_CHARS = 128


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _client_request_id(scope: Scope) -> str | None:
    raw = header(scope, b"x-request-id")
    if raw is None or not 0 < len(raw) <= MAX_REQUEST_ID_CHARS:
        return None
    # Visible ASCII only: the id is echoed into a header and into logs.
    if not all(0x21 <= byte <= 0x7E for byte in raw):
        return None
    return raw.decode("ascii")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, static_headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.static_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                               for k, v in (static_headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or f"req-{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        extra = [(b"x-request-id", request_id.encode("ascii")), *self.static_headers]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than the limit of {limit} bytes.",
                         code="request_too_large")


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        err = self._check_headers(scope)
        if err is not None:
            await error_response(err, self.config.max_error_chars)(scope, receive, send)
            return
        limit = self.config.max_body_bytes
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's body read; the error handlers answer 413.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, bounded_receive, send)

    def _check_headers(self, scope: Scope) -> APIError | None:
        cfg = self.config
        headers = scope.get("headers", ())
        if len(headers) > cfg.max_header_count:
            return APIError(431, f"The request has {len(headers)} headers; at most "
                            f"{cfg.max_header_count} are allowed.", code="headers_too_large")
        size = sum(len(key) + len(value) for key, value in headers)
        if size > cfg.max_header_bytes:
            return APIError(431, f"The request headers total {size} bytes; at most "
                            f"{cfg.max_header_bytes} are allowed.", code="headers_too_large")
        length = header(scope, b"content-length")
        if length is not None:
            if not (length.isdigit() and len(length) <= 18):
                return APIError(400, "Invalid Content-Length header.", code="invalid_header")
            if int(length) > cfg.max_body_bytes:
                return BodyTooLarge(cfg.max_body_bytes)
        return None
