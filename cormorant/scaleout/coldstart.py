"""Scale to zero: while no engine replica runs, generation gets a 503 with a Retry-After.

With `min_replicas=0` the engine deployment may have no replica at all. A generation request
then wakes it (one small call through the deployment handle, which Serve's autoscaler counts
as demand and answers by starting a replica) and is answered with 503 `engine_cold_start`
and `Retry-After: <expected start-up seconds>`, instead of hanging for a model load, unless
the response cache answers it: the middleware (innermost, after auth: a caller without a
key wakes nothing) leaves the refusal in the request's scope state, and the server runs it
once the caches missed, before admission (server.dispatch.DEFERRED_REFUSAL: a refusal costs
no quota). The replica count comes from Serve's controller, read at most once a second.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from cormorant.server.dispatch import DEFERRED_REFUSAL
from cormorant.server.errors import APIError

log = logging.getLogger(__name__)
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses"})
STATUS_TTL_S = 1.0


class ColdStart:
    """Whether the engine deployment has a running replica, and how to wake it."""

    def __init__(self, count_running: Callable[[], int], wake: Callable[[], object],
                 retry_after_s: int) -> None:
        self._count_running = count_running
        self._wake = wake
        self.retry_after_s = retry_after_s
        self._count, self._read_at = 1, float("-inf")
        self._wakes: set[asyncio.Future] = set()

    async def is_cold(self) -> bool:
        now = time.monotonic()
        if now - self._read_at >= STATUS_TTL_S:
            self._read_at = now
            try:
                self._count = await asyncio.to_thread(self._count_running)
            except Exception:  # the controller did not answer: assume warm, Serve will queue
                log.exception("reading the replica count failed")
                self._count = 1
        return self._count == 0

    def wake(self) -> None:
        """One call through the handle: queued demand that Serve scales up for."""
        if self._wakes:
            return
        future = asyncio.ensure_future(_await(self._wake()))
        self._wakes.add(future)
        future.add_done_callback(self._woken)

    def _woken(self, future: asyncio.Future) -> None:
        self._wakes.discard(future)
        self._read_at = float("-inf")  # a replica answered: read the count again
        if not future.cancelled() and future.exception() is not None:
            log.warning("waking the engine deployment failed: %r", future.exception())


async def _await(response: object) -> None:
    await response  # a DeploymentResponse


class ColdStartMiddleware:
    def __init__(self, app: ASGIApp, cold: ColdStart) -> None:
        self.app = app
        self.cold = cold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"] in GENERATION_PATHS and await self.cold.is_cold()):
            scope.setdefault("state", {})[DEFERRED_REFUSAL] = self.refuse
        await self.app(scope, receive, send)

    def refuse(self) -> None:
        """A cold request the caches could not answer: wake a replica, and 503."""
        self.cold.wake()
        raise APIError(503, "The model is starting (no engine replica is running); retry "
                            "after the time in Retry-After.", code="engine_cold_start",
                       headers={"retry-after": str(self.cold.retry_after_s)})
