"""The two places where we specialise uvicorn.

- `DrainingServer`: SIGTERM (or SIGINT) starts a drain instead of uvicorn's immediate stop:
  the listener stays open so new requests get a 503 rather than a refused connection, /ready
  turns 503, in-flight requests get the grace period, then the server stops and the process
  exits 0. A second signal stops at once.
- `JSONErrorH11Protocol`: requests h11 itself rejects (malformed, or headers past the size
  limit) get an OpenAI-shaped JSON error with the right status (431 for oversized headers)
  instead of uvicorn's plain-text 400. It overrides `send_400_response`, an uvicorn internal:
  re-check it when upgrading uvicorn (the tests cover it).
Imports uvicorn, h11 and server modules (lifecycle, errors).
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from types import FrameType

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from cormorant.server.errors import APIError
from cormorant.server.lifecycle import Lifecycle

logger = logging.getLogger("cormorant.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._is_draining = False

    async def serve(self, sockets=None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's handler: it would record the signal and re-raise it after shutdown,
        # turning a clean drain into death by SIGTERM (exit status 143 instead of 0).
        if not self._is_draining and self._loop is not None and not self.should_exit:
            self._is_draining = True
            logger.info("received %s: draining", signal.Signals(sig).name)
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        logger.info("received %s again: stopping now", signal.Signals(sig).name)
        self.should_exit = True
        self.force_exit = True

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self.lifecycle.drain()
        finally:
            self.should_exit = True


class JSONErrorH11Protocol(H11Protocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._error_status = 400
        next_event = self.conn.next_event

        def next_event_noting_status():  # h11 knows the right status; uvicorn drops it
            try:
                return next_event()
            except h11.RemoteProtocolError as exc:
                self._error_status = exc.error_status_hint or 400
                raise

        self.conn.next_event = next_event_noting_status  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        status = self._error_status if self._error_status in (400, 413, 414, 431) else 400
        if status == 431:
            err = APIError(431, "The request headers are too large.", code="headers_too_large")
        else:
            err = APIError(status, "Invalid HTTP request received.", code="invalid_http")
        body = json.dumps(err.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", f"req-{uuid.uuid4().hex}".encode())]
        try:
            event = h11.Response(status_code=status, headers=headers,
                                 reason=STATUS_PHRASES[status])
            self.transport.write(self.conn.send(event))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # the connection is past answering; closing is all that is left
        self.transport.close()
