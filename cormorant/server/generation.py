"""Running one HTTP request's engine requests and watching the client while they run.

`EngineStream` starts every prompt of a request at once (one engine request each, through
`engine.add_request`) with one asyncio queue for the whole HTTP request: the engine side puts
a prompt's index into it when that prompt has news, and the stream takes the news from the
prompt's handle, so a token crosses one queue between the engine loop and the response.
It hands admission slots back as first outputs arrive, and guarantees that however it ends
(finished, client gone, drain, engine death, its x-request-timeout passing while queued or
running: 504) every engine request is closed, which aborts it in the engine and frees its KV
blocks; the other requests and the server run on.
`collect_unless_disconnected` is the non-streaming counterpart of SSEResponse's disconnect
watch. Imports asyncio, starlette, frontend.outputs, sampling_params and server modules.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.types import Receive

from cormorant.frontend.outputs import RequestOutput
from cormorant.sampling_params import SamplingParams
from cormorant.server.engine_client import EngineClient
from cormorant.server.errors import APIError
from cormorant.server.lifecycle import Lifecycle
from cormorant.server.request_admission import Ticket, deadline_error

logger = logging.getLogger("cormorant.server")
T = TypeVar("T")


@dataclass
class Job:
    request_id: str  # engine request id: ours, never the client's x-request-id
    prompt_token_ids: list[int]
    params: SamplingParams


class EngineStream:
    def __init__(self, engine: EngineClient, jobs: list[Job], ticket: Ticket,
                 lifecycle: Lifecycle, on_close: Callable[[], None] | None = None,
                 cache_salt: str = "") -> None:
        """on_close: runs once when the stream is closed (the model lease's release);
        cache_salt: every job's prefix-cache namespace (gateway.auth.keys.prefix_cache_salt)."""
        self._engine = engine
        self._on_close = on_close
        self._peeked: tuple[int, RequestOutput] | None = None
        self._ticket = ticket
        self._lifecycle = lifecycle
        # Prompt indexes with news (None: woken by fail()); the only queue a token crosses.
        self._queue: asyncio.Queue = asyncio.Queue()
        self._failure: APIError | None = None
        self._closed = False
        self._handles: list[Any] = []
        # Start now: the engine sees the requests before the response even begins.
        try:
            for index, job in enumerate(jobs):
                # engine_args: the caller's tenant, priority and weight in the fair queue.
                self._handles.append(engine.add_request(
                    job.request_id, job.prompt_token_ids, job.params, self._queue, index=index,
                    cache_salt=cache_salt, **ticket.engine_args))
        except Exception:
            logger.exception("engine request %s failed", jobs[len(self._handles)].request_id)
            self.fail(self._engine_failure())
        self._num_jobs = len(jobs)
        lifecycle.register(self)
        # x-request-timeout: queued or running at the deadline -> 504, which aborts the
        # requests (and frees their blocks) when the stream closes.
        self._deadline: asyncio.TimerHandle | None = None
        if ticket.seconds_left is not None:
            self._deadline = asyncio.get_running_loop().call_later(
                max(0.0, ticket.seconds_left), self._expire)

    @property
    def engine(self) -> EngineClient:
        return self._engine

    async def _next(self) -> tuple[int, RequestOutput]:
        """The next prompt's news; raises the APIError the stream failed with."""
        if self._peeked is not None:
            item, self._peeked = self._peeked, None
            return item
        index = await self._queue.get()
        if self._failure is not None:
            raise self._failure
        handle = self._handles[index]
        try:
            return index, handle.take()
        except Exception:
            logger.exception("engine request %s failed", handle.request_id)
            self.fail(self._engine_failure())
            raise self._failure from None

    async def first(self) -> None:
        """Wait for the first output; raise the APIError if the stream fails before it.
        outputs() still yields that output: it is only looked at here (fallbacks decide on
        it whether to try another model)."""
        if self._peeked is None:
            self._peeked = await self._next()
        if self._failure is not None:
            raise self._failure
        out = self._peeked[1]
        if out.error:
            raise self._rejected(out.error)

    def _engine_failure(self) -> APIError:
        if not self._engine.stats().is_loop_alive:
            return APIError(503, "The engine stopped while serving the request.",
                            code="engine_unavailable")
        return APIError(500, "The engine failed while serving the request.",
                        code="internal_error")

    def _expire(self) -> None:
        self._deadline = None
        if not self._closed:
            self.fail(deadline_error(running=not self._ticket.is_queued))

    def fail(self, err: APIError) -> None:
        """End the stream with `err` (drain deadline, engine death); safe to call twice."""
        if self._failure is None:
            self._failure = err
            self._queue.put_nowait(None)  # wake the consumer

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, RequestOutput) as the engine produces them, until all finish."""
        remaining = self._num_jobs
        try:
            while remaining:
                index, out = await self._next()
                if self._failure is not None:
                    raise self._failure
                self._ticket.observe(index, out)  # started (queue slot back) and usage
                if out.error:
                    raise self._rejected(out.error)
                if out.finished:
                    remaining -= 1
                yield index, out
        finally:
            await self.aclose()

    def _rejected(self, message: str) -> APIError:
        if not self._engine.stats().is_loop_alive:
            return APIError(503, "The engine stopped while serving the request.",
                            code="engine_unavailable")
        return APIError(400, f"The engine rejected the request: {message}",
                        code="request_rejected")

    async def aclose(self) -> None:
        """Abort whatever is still running; idempotent, safe from any cleanup path."""
        if self._closed:
            return
        self._closed = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        for handle in self._handles:
            handle.close()
        self._ticket.release()
        self._lifecycle.unregister(self)
        if self._on_close is not None:
            self._on_close()

    async def collect(self) -> list[RequestOutput]:
        """The final output of each prompt, in prompt order."""
        finals: list[RequestOutput | None] = [None] * self._num_jobs
        async with aclosing(self.outputs()) as outputs:
            async for index, out in outputs:
                finals[index] = out
        return [out for out in finals if out is not None]


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def collect_unless_disconnected(receive: Receive, work: Awaitable[T]) -> T | None:
    """Await `work`; if the client hangs up first, cancel it and return None."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()
