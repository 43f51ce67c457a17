"""One batch line, served in-process by the same code as its HTTP route (no HTTP loopback).

`serve_line` builds the ASGI request the route would have seen (the owner's principal on its
state, marked BATCH_LINE so admission gives it the engine's background class and the owner's
batch quota account) and calls the route's serving function with it, so validation,
admission, quotas, the response cache and usage (a telemetry RequestRecord, finished here as
the telemetry middleware would) all apply. The result is OpenAI's output-line shape:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`.
Refusals worth waiting out (429 quota, 503 overload or drain) raise `Retry` instead of being
answered. Imports starlette and server/gateway modules.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cormorant.gateway.auth.keys import Principal
from cormorant.gateway.auth.middleware import acting_as
from cormorant.gateway.telemetry.request_log import CURRENT, RequestRecord
from cormorant.server.errors import APIError
from cormorant.server.request_admission import BATCH_LINE

logger = logging.getLogger("cormorant.server")
RETRY_STATUSES = frozenset({429, 503})


class Retry(Exception):
    def __init__(self, after_s: float) -> None:
        super().__init__(after_s)
        self.after_s = after_s


def principal_doc(principal: Principal) -> dict:
    doc = dataclasses.asdict(principal)
    for name in ("scopes", "allowed_models"):
        if doc[name] is not None:
            doc[name] = sorted(doc[name])
    return doc


def principal_of(doc: dict) -> Principal:
    doc = dict(doc)
    for name in ("scopes", "allowed_models"):
        if doc.get(name) is not None:
            doc[name] = frozenset(doc[name])
    return Principal(**doc)


class _ServingApp:
    """What `request.app` must offer the serving code: app.state.cormorant."""

    def __init__(self, state: Any) -> None:
        self.state = type("AppState", (), {"cormorant": state})()


async def _serve(state: Any, url: str, request: Request) -> Response:
    # Imported here: the route modules import this package's state, not the other way round.
    from cormorant.server.route_embeddings import create_embeddings
    from cormorant.server.serving_chat import create_chat_completion
    from cormorant.server.serving_completions import create_completion

    if url == "/v1/chat/completions":
        return await create_chat_completion(request, state)
    if url == "/v1/completions":
        return await create_completion(request, state)
    return await create_embeddings(request)


def _request(state: Any, principal: Principal, url: str, body: bytes, request_id: str
             ) -> Request:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # nobody disconnects: the line runs to its end
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": url, "raw_path": url.encode(),
             "root_path": "", "query_string": b"", "scheme": "http", "http_version": "1.1",
             "headers": [(b"content-type", b"application/json")], "app": _ServingApp(state),
             "state": {"principal": principal, "request_id": request_id, BATCH_LINE: True}}
    return Request(scope, receive)


async def serve_line(state: Any, principal: Principal, custom_id: str, line: dict) -> dict:
    """The line's output record; raises Retry for a refusal to try again later."""
    request_id = "req_" + secrets.token_hex(12)
    request = _request(state, principal, line["url"],
                       json.dumps(line["body"]).encode("utf-8"), request_id)
    record = RequestRecord(request.scope)
    token = CURRENT.set(record)
    try:
        with acting_as(principal):
            response = await _serve(state, line["url"], request)
        status, body = response.status_code, json.loads(bytes(response.body))
    except APIError as err:
        if err.status in RETRY_STATUSES:
            raise Retry(float(err.headers.get("retry-after", 1.0))) from None
        status, body = err.status, err.body(state.config.max_error_chars)
    except Exception:
        logger.exception("batch line %s failed", request_id)
        status = 500
        body = APIError(500, "The server failed while serving this request.",
                        code="internal_error").body()
    finally:
        CURRENT.reset(token)
    record.status = status
    record.end_mono = time.monotonic()
    state.telemetry.finish(record)
    return {"id": "batch_req_" + secrets.token_hex(12), "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None}
