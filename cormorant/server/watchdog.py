"""The engine watchdog: a stuck (or dead) engine loop with work pending ends the process.

It notices an engine loop that is stuck while work is pending (or died), and, if that lasts
past a grace period, logs why and exits the process with a non-zero status so that an
orchestrator restarts it.

Stuck is not slow: a step that computes (the engine's CPU time grows, see
frontend.core_client.Liveness) is progress, however long it takes, so a long prefill on a slow
CPU never gets the server killed. Stuck is (1) no progress at all for `stall_s` since work
arrived or since the last progress, whatever came before (an idle spell included), or (2) one
step running past the hard ceiling `max_step_s` (default MAX_STEP_S, 0: none) even while it
burns CPU (a spin-wait in a driver looks like computing).

/health's 503 and this exit share one definition of "stalled" (`stall_reason`) and one
threshold, so the probe and the watchdog never disagree. The watchdog is a thread, not an
asyncio task: it must still act when the event loop itself is wedged. Exit is os._exit:
a stuck engine thread would keep an orderly interpreter shutdown waiting forever. Before it
goes, the watchdog logs the engine thread's Python stack (what was it stuck in?) and runs
the before-exit hooks (flush usage records, fail in-flight requests), each bounded in time.

`name_native_threads` gives our threads their names at the OS level (/proc/.../comm), so
`top -H`, py-spy and gdb show "cormorant-engin" instead of "python".
Imports the standard library and engine.messages.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from cormorant.engine.messages import EngineStats

logger = logging.getLogger("cormorant.watchdog")

EXIT_CODE = 70  # EX_SOFTWARE (sysexits.h): the process is broken, restart it
ENGINE_THREAD_NAME = "cormorant-engine"  # frontend.core_client names its loop thread so
HOOK_TIMEOUT_S = 2.0
MAX_STEP_S = 600.0  # one step computing longer than this is stuck anyway


def stall_reason(stats: EngineStats, stall_s: float, now: float | None = None,
                 max_step_s: float = MAX_STEP_S) -> str | None:
    """Why the engine is not making progress, or None while it is (or has nothing to do)."""
    if not stats.is_loop_alive:
        return "engine loop is not running"
    if not stats.has_pending_work:
        return None
    now = time.monotonic() if now is None else now
    quiet = now - stats.last_progress_time
    if quiet > stall_s:
        return f"engine loop is stuck: no progress for {quiet:.0f}s with work pending"
    in_step = now - max(stats.last_step_time, stats.pending_since or 0.0)
    if max_step_s > 0 and in_step > max_step_s:
        return (f"engine loop is stuck: one step has run for {in_step:.0f}s, over the "
                f"{max_step_s:.0f}s ceiling, with work pending")
    return None


def name_native_threads(prefix: str = "cormorant-") -> None:
    """Best effort, Linux only: the kernel keeps 15 characters of a thread's name."""
    for thread in threading.enumerate():
        if thread.name.startswith(prefix) and thread.native_id is not None:
            try:
                with open(f"/proc/self/task/{thread.native_id}/comm", "w") as f:
                    f.write(thread.name[:15])
            except OSError:
                return


def thread_stacks(name: str) -> str:
    """The Python stacks of the live threads called `name` (read without their help)."""
    frames = sys._current_frames()
    parts = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident) if thread.name == name else None
        if frame is not None:
            stack = "".join(traceback.format_stack(frame))
            parts.append(f"thread {thread.name} (native id {thread.native_id}):\n{stack}")
    return "\n".join(parts) or f"no live thread named {name}"


class Watchdog:
    """Checks `stats()` every `interval_s`; stalled for `exit_grace_s` -> exit. A negative
    grace never exits (the probe still turns 503)."""

    def __init__(self, stats: Callable[[], EngineStats], stall_s: float,
                 exit_grace_s: float, *, interval_s: float = 0.5, exit_code: int = EXIT_CODE,
                 exit_fn: Callable[[int], Any] = os._exit,
                 max_step_s: float = MAX_STEP_S) -> None:
        self._stats = stats
        self.stall_s = stall_s
        self.max_step_s = max_step_s
        self.exit_grace_s = exit_grace_s
        self.interval_s = interval_s
        self.exit_code = exit_code
        self._exit_fn = exit_fn
        self.before_exit: list[Callable[[], Any]] = []
        self.reason: str | None = None
        self.stalled_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Watchdog":
        name_native_threads()
        self._thread = threading.Thread(target=self._run, name="cormorant-watchdog",
                                        daemon=True)
        self._thread.start()
        name_native_threads()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # a broken stats() is itself a stall signal; keep watching
                logger.exception("watchdog: engine stats failed")

    def check(self, now: float | None = None) -> str | None:
        """One look at the engine; exits the process when the stall outlived the grace."""
        now = time.monotonic() if now is None else now
        reason = stall_reason(self._stats(), self.stall_s, now, self.max_step_s)
        if reason is None:
            if self.stalled_since is not None:
                logger.warning("watchdog: engine loop recovered after %.1fs",
                               now - self.stalled_since)
            self.reason, self.stalled_since = None, None
            return None
        if self.stalled_since is None:
            self.stalled_since = now
            then = (f"; exiting in {self.exit_grace_s:.0f}s unless it recovers"
                    if self.exit_grace_s >= 0 else "")
            logger.error("watchdog: %s%s", reason, then)
        self.reason = reason
        if 0 <= self.exit_grace_s <= now - self.stalled_since:
            self._exit(reason)
        return reason

    def _exit(self, reason: str) -> None:
        logger.critical("watchdog: %s for %.0fs; exiting with status %d so the process is "
                        "restarted. Engine thread:\n%s", reason, self.exit_grace_s,
                        self.exit_code, thread_stacks(ENGINE_THREAD_NAME))
        for hook in self.before_exit:
            _run_bounded(hook, HOOK_TIMEOUT_S)
        for handler in logging.getLogger().handlers + logger.handlers:
            try:
                handler.flush()
            except Exception:
                pass
        sys.stderr.flush()
        self._exit_fn(self.exit_code)


def _run_bounded(hook: Callable[[], Any], timeout_s: float) -> None:
    """A hook may itself hang on the stuck engine; it gets timeout_s, then we go anyway."""
    done = threading.Event()

    def run() -> None:
        try:
            hook()
        except Exception:
            logger.exception("watchdog: before-exit hook failed")
        finally:
            done.set()

    threading.Thread(target=run, name="cormorant-watchdog-hook", daemon=True).start()
    done.wait(timeout_s)
