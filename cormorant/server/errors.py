"""Every error the server sends, in one place: the OpenAI shape, its status and its size.

`APIError` is what serving code raises; `install_error_handlers` turns it (and every framework
or unexpected exception) into `{"error": {"message", "type", "param", "code"}}`. Messages are
bounded and scrubbed of memory addresses so no response echoes megabytes of input or internals;
tracebacks go to the log only. Imports starlette, fastapi and pydantic; nothing from cormorant
but sampling_params.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from cormorant.sampling_params import SamplingParamsError

logger = logging.getLogger("cormorant.server")

DEFAULT_MAX_CHARS = 512
DEFAULT_RETRY_AFTER_S = 5  # a 503/429 whose raiser named no delay (a restarting engine, ...)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "function-after",
               "function-before", "function-plain", "function-wrap"}
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
          429: "rate_limit_error"}


class APIError(Exception):
    """A request the server will not (or cannot) serve, with everything the response needs."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status) or (
            "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self, max_chars: int = DEFAULT_MAX_CHARS) -> dict:
        return {"error": {
            "message": bound(self.message, max_chars),
            "type": self.type,
            "param": bound(self.param, 128) if self.param is not None else None,
            "code": self.code,
        }}


def bound(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Cut a message to max_chars and hide anything that looks like a memory address."""
    text = _ADDRESS.sub("0x…", str(text))
    if len(text) > max_chars:
        text = text[: max_chars - 14] + "… (truncated)"
    return text


def error_response(err: APIError, max_chars: int = DEFAULT_MAX_CHARS) -> Response:
    content = json.dumps(err.body(max_chars), ensure_ascii=False, separators=(",", ":"))
    headers = err.headers
    if err.status in (429, 503) and not any(k.lower() == "retry-after" for k in headers):
        # Every refusal a client may retry says when (the engine died, a model failed to load,
        # ...); the callers that know better (admission, quotas, drain) set their own.
        headers = {**headers, "retry-after": str(DEFAULT_RETRY_AFTER_S)}
    return Response(content, status_code=err.status, headers=headers,
                    media_type="application/json")


# --- translating other exceptions ------------------------------------------------------------

def loc_to_param(loc: Sequence[str | int]) -> str:
    """('messages', 0, 'content') -> 'messages[0].content' (the way OpenAI names params)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def from_validation_error(exc: ValidationError) -> APIError:
    """The first problem pydantic found, phrased the way OpenAI phrases it."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0] if errors else {"type": "value_error", "loc": (), "msg": "invalid request"}
    # A field typed as a plain union reports one error per member; the member name is noise.
    loc = [p for p in first.get("loc", ()) if not _is_union_tag(p)]
    param = loc_to_param(loc) or None
    kind, msg = first.get("type", ""), str(first.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        message, code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
    elif kind == "missing":
        message, code = f"Missing required parameter: '{param}'.", "missing_required_parameter"
    else:
        msg = msg.removeprefix("Value error, ")
        message = f"Invalid value for '{param}': {msg}" if param else msg
        code = "invalid_value"
    return APIError(400, message, param=param, code=code)


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and ("[" in part or part in _UNION_TAGS)


def from_sampling_error(exc: SamplingParamsError) -> APIError:
    return APIError(400, str(exc), param=exc.param, code="invalid_value")


def install_error_handlers(app: FastAPI, max_chars: int) -> None:
    """Route every exception type to an OpenAI-shaped body; nothing escapes as HTML or text."""

    async def on_api_error(_: Request, exc: APIError) -> Response:
        return error_response(exc, max_chars)

    async def on_validation(_: Request, exc: RequestValidationError) -> Response:
        # Only path and query parameters reach FastAPI's own validation: bodies are parsed
        # by server.body.
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = loc_to_param([p for p in first.get("loc", ()) if p not in ("query", "path")])
        err = APIError(400, f"Invalid value for '{param}': {first.get('msg', 'invalid')}",
                       param=param or None, code="invalid_value")
        return error_response(err, max_chars)

    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message, code = f"Not found: {request.url.path}", "not_found"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        err = APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {}))
        return error_response(err, max_chars)

    async def on_client_disconnect(request: Request, _: ClientDisconnect) -> Response:
        # The client left while sending its body (or took too long: the transport's body
        # deadline): not a server error. 499 is nginx's "client closed request"; nobody
        # receives this response, but the request log and metrics count it as such.
        logger.info("client disconnected while sending the body of %s %s", request.method,
                    request.url.path)
        return error_response(APIError(499, "The client closed the connection before the "
                                       "request body was complete.",
                                       code="client_disconnected"), max_chars)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        logger.exception("unexpected error while serving a request", exc_info=exc)
        return error_response(APIError(500, "The server had an internal error while processing "
                                       "the request.", code="internal_error"), max_chars)

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_client_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
