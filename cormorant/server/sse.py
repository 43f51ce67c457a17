"""Server-sent events: framing (`data: {json}` ... `data: [DONE]`) and the streaming response.

`SSEResponse` sends the stream while it watches the connection; when the client goes away it
cancels the producer at once (whatever it is awaiting, even a request still queued in the
engine), which closes the generators below it and so aborts the engine requests. It does not
rely on the ASGI server's spec version to notice a disconnect.
`sse_body` frames batches of chunks and turns a failure mid-stream into a final error event.
Imports starlette and server.errors.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from cormorant.server.errors import APIError

logger = logging.getLogger("cormorant.server")

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse_frame(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def sse_body(batches: AsyncIterator[list[dict]], max_error_chars: int
                   ) -> AsyncIterator[bytes]:
    """One write per batch (all choices of one engine step); [DONE] or an error event last."""
    async with aclosing(batches) as source:
        try:
            async for batch in source:
                if batch:
                    yield b"".join(sse_frame(chunk) for chunk in batch)
        except APIError as err:
            yield sse_frame(err.body(max_error_chars))
            return
        except Exception:
            logger.exception("stream failed")
            err = APIError(500, "The server had an internal error while streaming the "
                           "response.", code="internal_error")
            yield sse_frame(err.body(max_error_chars))
            return
    yield DONE


class SSEResponse(StreamingResponse):
    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str] | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(body, status_code=200, headers={**SSE_HEADERS, **(headers or {})},
                         media_type="text/event-stream")
        # Runs however the response ends, even if the body generator never started (a
        # generator that never ran has no finally to run).
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tasks: list[asyncio.Future] = []
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            tasks = [asyncio.ensure_future(self._produce(send)),
                     asyncio.ensure_future(_wait_for_disconnect(receive))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Client gone: cancelling the producer closes the body generator, which aborts the
            # engine requests. Stream done: the watcher is simply no longer needed.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.on_close is not None:
                await self.on_close()

    async def _produce(self, send: Send) -> None:
        async with aclosing(self.body_iterator) as body:  # type: ignore[type-var]
            async for data in body:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
