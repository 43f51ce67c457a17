"""The server's life: warm-up (then /ready), liveness (/health), the engine watchdog and drain.

Every in-flight generation registers here as a `Failable` so that two events can end it with
a proper error instead of leaving its client hanging: the grace period of a drain running out,
and the engine loop dying. Drain: /ready turns 503 and new generation requests get 503 at
once; in-flight ones run on until they finish or the grace period ends.
Imports asyncio and server modules (config, errors, engine_client).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

from cormorant.engine.messages import EngineStats
from cormorant.server.watchdog import stall_reason
from cormorant.server.config import ServerConfig
from cormorant.server.engine_client import EngineClient
from cormorant.server.errors import APIError

logger = logging.getLogger("cormorant.server")

WATCHDOG_INTERVAL_S = 1.0
# After failing the stragglers, how long to let them write their error before exiting anyway.
FAIL_FLUSH_S = 2.0


class Failable(Protocol):
    def fail(self, err: APIError) -> None: ...


class Warmable(Protocol):
    async def warm(self) -> None: ...


class Lifecycle:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.is_ready = False
        self.is_draining = False
        self._in_flight: set[Failable] = set()
        self._has_served = False

    # --- in-flight registry ------------------------------------------------------------------

    def check_accepting(self) -> None:
        if self.is_draining:
            raise APIError(503, "The server is shutting down and accepts no new requests.",
                           code="server_shutting_down",
                           headers={"retry-after": str(self.config.retry_after_s)})

    def register(self, work: Failable) -> None:
        self._in_flight.add(work)

    def unregister(self, work: Failable) -> None:
        self._in_flight.discard(work)
        if not self._has_served:  # the start-up time a user feels, printed once
            self._has_served = True
            _announce(f"first request served {_process_age_s():.1f} s after start")

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    def fail_all(self, err: APIError) -> None:
        for work in list(self._in_flight):
            work.fail(err)

    # --- drain -------------------------------------------------------------------------------

    async def drain(self, grace_s: float | None = None) -> None:
        """Stop admitting, let in-flight work finish within the grace period, fail the rest."""
        grace_s = self.config.drain_grace_s if grace_s is None else grace_s
        self.is_draining = True
        self.is_ready = False
        logger.info("draining: %d requests in flight, grace period %.1fs",
                    self.num_in_flight, grace_s)
        if not await self._wait_idle(grace_s):
            logger.warning("grace period over: failing %d requests", self.num_in_flight)
            self.fail_all(APIError(503, "The server shut down before the request finished.",
                                   code="server_shutting_down"))
            await self._wait_idle(FAIL_FLUSH_S)

    async def _wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self._in_flight

    # --- readiness, liveness, watchdog -------------------------------------------------------

    async def warm_up(self, served: list[Warmable], names: list[str] | None = None) -> None:
        """One short generation (or embedding) through the whole stack per loaded model,
        then /ready says yes, and the server says where it listens and what it serves."""
        if self.config.warmup:
            try:
                for model in served:
                    await model.warm()
            except Exception:
                logger.exception("warm-up failed; /ready stays 503")
                return
        if not self.is_draining:
            self.is_ready = True
            logger.info("ready")
            _announce(f"serving {', '.join(names or []) or 'no model yet'} at "
                      f"http://{self.config.host}:{self.config.port} (ready "
                      f"{_process_age_s():.1f} s after start)")

    def health(self, stats: EngineStats) -> tuple[int, dict]:
        """200, or 503 with the reason: the watchdog's own definition of stuck (stall_reason)
        with the same thresholds, so the probe and the watchdog never disagree."""
        now = time.monotonic()
        body = {"status": "ok", "engine": {
            "is_loop_alive": stats.is_loop_alive, "steps": stats.steps,
            "seconds_since_step": round(max(0.0, now - stats.last_step_time), 3),
            "seconds_since_progress": round(max(0.0, now - stats.last_progress_time), 3),
            "has_pending_work": stats.has_pending_work, "num_running": stats.num_running,
            "num_waiting": stats.num_waiting, "num_free_blocks": stats.num_free_blocks,
            "num_total_blocks": stats.num_total_blocks}, "num_in_flight": self.num_in_flight}
        reason = stall_reason(stats, self.config.health_stall_s, now,
                              self.config.health_max_step_s)
        if reason is not None:
            body["status"] = reason
            return 503, body
        return 200, body

    async def watch_engines(self, engines: Callable[[], list[EngineClient]]) -> None:
        """If an engine loop dies, nothing will ever answer the requests waiting on it: they
        are failed at once (requests on other models run on)."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            for engine in engines():
                try:
                    alive = engine.stats().is_loop_alive
                except Exception:
                    logger.exception("engine stats failed")
                    alive = False
                stranded = [w for w in self._in_flight if getattr(w, "engine", None) is engine]
                if not alive and stranded:
                    logger.error("engine loop is not running: failing %d requests",
                                 len(stranded))
                    err = APIError(503, "The engine stopped while serving the request.",
                                   code="engine_unavailable")
                    for work in stranded:
                        work.fail(err)


def _announce(line: str) -> None:
    """A start-up line for the person who ran `cormorant serve` (stdout, whatever the log
    level)."""
    print(f"cormorant: {line}", flush=True)


def _process_age_s() -> float:
    """Seconds since this process started (Linux /proc), else since this module loaded."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _LOADED_AT


_LOADED_AT = time.monotonic()
