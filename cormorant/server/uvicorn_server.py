"""The two places where we specialise uvicorn.

- `DrainingServer`: SIGTERM (or SIGINT) starts a drain instead of uvicorn's immediate stop:
  the listener stays open so new requests get a 503 rather than a refused connection, /ready
  turns 503, in-flight requests get the grace period, then the server stops and the process
  exits 0. A second signal stops at once.
- `JSONErrorH11Protocol`: requests h11 itself rejects (malformed, or headers past the size
  limit) get an OpenAI-shaped JSON error with the right status (431 for oversized headers)
  instead of uvicorn's plain-text 400, and the connection is closed. It also bounds slow and
  hostile clients (ServerConfig): the time to send the request headers and the body (408, then
  close; a connection that never sends a request is closed), the open connections in all and
  per client address (503 and close), and a chunk size past the body limit (413, where h11
  would wait for its bytes). It overrides uvicorn internals (`send_400_response`,
  `handle_events`, `on_response_complete`, the cycle's `more_body`): re-check them when
  upgrading uvicorn (the tests cover them).
Imports uvicorn, h11 and server modules (config, lifecycle, errors).
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from types import FrameType

import h11
from h11._readers import ChunkedReader
import uvicorn
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from cormorant.server.config import ServerConfig
from cormorant.server.errors import APIError
from cormorant.server.lifecycle import Lifecycle

logger = logging.getLogger("cormorant.server")
MAX_CHUNK_SIZE = 1 << 63  # h11 accepts 20 hex digits; past int64 it is an overflow attack


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


def _raw_response(err: APIError) -> bytes:
    """A whole HTTP/1.1 error response, for the moments h11 cannot send one (no request yet)."""
    body = json.dumps(err.body()).encode()
    head = [f"HTTP/1.1 {err.status} {STATUS_PHRASES[err.status].decode()}",
            "content-type: application/json", "connection: close",
            f"content-length: {len(body)}", f"x-request-id: req-{uuid.uuid4().hex}",
            *(f"{k}: {v}" for k, v in err.headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class JSONErrorH11Protocol(H11Protocol):
    def __init__(self, *args, limits: ServerConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or ServerConfig()
        self._error_status = 400
        self._deadline: asyncio.TimerHandle | None = None
        self._client_host: str | None = None
        next_event = self.conn.next_event

        def next_event_noting_status():  # h11 knows the right status; uvicorn drops it
            try:
                event = next_event()
                self._check_chunk_size()
            except h11.RemoteProtocolError as exc:
                self._error_status = exc.error_status_hint or 400
                raise
            return event

        self.conn.next_event = next_event_noting_status  # type: ignore[method-assign]

    # --- connection caps ------------------------------------------------------------------
    def _open_per_client(self) -> dict[str, int]:
        counts = getattr(self.server_state, "cormorant_per_client", None)
        if counts is None:
            counts = self.server_state.cormorant_per_client = {}  # type: ignore[attr-defined]
        return counts

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        counts = self._open_per_client()
        if len(self.connections) > self.limits.max_connections:
            self._refuse_connection(f"The server has {self.limits.max_connections} open "
                                    "connections, its limit.")
            return
        if host is not None and counts.get(host, 0) >= self.limits.max_connections_per_client:
            self._refuse_connection(f"Too many open connections from your address (limit "
                                    f"{self.limits.max_connections_per_client}).")
            return
        if host is not None:
            counts[host] = counts.get(host, 0) + 1
            self._client_host = host
        self._arm(self.limits.header_timeout_s, self._on_header_timeout)

    def _refuse_connection(self, message: str) -> None:
        logger.warning("refused a connection: %s", message)
        err = APIError(503, message, code="too_many_connections",
                       headers={"retry-after": str(self.limits.retry_after_s)})
        self.transport.write(_raw_response(err))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._client_host is not None:
            counts = self._open_per_client()
            counts[self._client_host] -= 1
            if counts[self._client_host] <= 0:
                del counts[self._client_host]
            self._client_host = None
        super().connection_lost(exc)

    # --- read deadlines -----------------------------------------------------------------
    def _arm(self, delay: float, callback) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:  # a new request's headers in
            self._arm(self.limits.body_timeout_s, self._on_body_timeout)
        if self.cycle is not None and not self.cycle.more_body:
            self._disarm()  # the body is complete: the app decides how long it takes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's headers have a deadline too. IDLE: no pipelined request is
        # already under way (that one has its body deadline).
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm(self.limits.header_timeout_s + self.timeout_keep_alive,
                      self._on_header_timeout)

    def _on_header_timeout(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or (self.cycle is not None and self.cycle.more_body):
            return
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            logger.info("closing a connection that sent no request for %.0f s",
                        self.limits.header_timeout_s)
        else:
            logger.warning("request headers not received within %.0f s: 408",
                           self.limits.header_timeout_s)
            self.transport.write(_raw_response(APIError(
                408, f"The request headers were not received within "
                f"{self.limits.header_timeout_s:g} s.", code="request_timeout")))
        self.transport.close()

    def _on_body_timeout(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        logger.warning("request body not received within %.0f s: 408",
                       self.limits.body_timeout_s)
        if not cycle.response_started:
            self.transport.write(_raw_response(APIError(
                408, f"The request body was not received within {self.limits.body_timeout_s:g}"
                " s.", code="request_timeout")))
        cycle.disconnected = True  # the app's next receive() is a disconnect
        cycle.message_event.set()
        self.transport.close()

    # --- framing -----------------------------------------------------------------------
    def _check_chunk_size(self) -> None:
        """h11 takes any chunk size of up to 20 hex digits and then waits for that many bytes;
        a chunk larger than the whole body limit is refused at once (h11 internals: re-check
        `_reader._bytes_in_chunk` when upgrading h11; the tests cover it)."""
        reader = getattr(self.conn, "_reader", None)
        if not isinstance(reader, ChunkedReader):
            return
        if reader._bytes_in_chunk >= MAX_CHUNK_SIZE:  # no sane framing: malformed
            raise h11.RemoteProtocolError("chunk size overflows", error_status_hint=400)
        if reader._bytes_in_chunk > self.limits.max_body_bytes:
            raise h11.RemoteProtocolError("chunk size past the body limit", error_status_hint=413)

    def send_400_response(self, msg: str) -> None:
        status = self._error_status if self._error_status in (400, 413, 414, 431) else 400
        if status == 431:
            err = APIError(431, "The request headers are too large.", code="headers_too_large")
        elif status == 413:
            err = APIError(413, "The request body is larger than the limit of "
                           f"{self.limits.max_body_bytes} bytes.", code="request_too_large")
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
