"""Admission control tied to engine state: refuse work the engine cannot start soon enough.

`AdmissionController.admit(prompt_lens, deadline_s)` returns a `Ticket` or a `Refusal`
(503 + Retry-After). It refuses when, counting the engine's queue and the requests admitted
here that have not started yet (whichever view is larger):

- the waiting requests or their queued prompt tokens pass their configured budgets;
- the KV blocks the queued prefills need (prompt tokens / block size, per prompt) exceed the
  free blocks plus `max_waiting_kv_caches` whole caches: the queue holds more than the cache
  can take in within a few turnovers;
- the queue's expected wait (backlog tokens / measured drain rate) passes
  `max_queue_delay_s`, or the request's own deadline.

The drain rate is measured, not configured: `DrainMeter` counts the prompt tokens of requests
as they start (their first output marks the prefill done) over a sliding window. Retry-After
is the time the backlog needs to drain below the limit that refused, at that rate.

A request may carry a deadline (header `x-request-timeout`, seconds, see `parse_timeout`): if
any of its prompts is still queued when it passes, the ticket's expiry handler runs (the
server fails the request with 504, which aborts it and frees its place in the engine queue).
Once generation has started, the server (server.generation) ends a request still running at
its deadline alone (504, its blocks freed, `seconds_left`); a client that leaves is dropped
by the server's disconnect watch, queued or not.
Engine-agnostic: the engine's stats (engine.messages.EngineStats) come in through a callable.
Imports the standard library and engine.messages.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cormorant.engine.messages import EngineStats

TIMEOUT_HEADER = "x-request-timeout"
PRIORITY_HEADER = "x-request-priority"
MAX_PRIORITY = 1_000_000
MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class Refusal:
    """An error value: the status, message, OpenAI error code and headers of the answer."""

    status: int
    message: str
    code: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AdmissionConfig:
    max_waiting_requests: int = 512
    max_waiting_prompt_tokens: int = 1 << 20
    max_waiting_kv_caches: float = 4.0
    max_queue_delay_s: float = 60.0
    retry_after_s: float = 1.0  # while no drain rate has been measured
    drain_window_s: float = 10.0
    block_size: int = 16


def parse_priority(value: str | None) -> int:
    """The x-request-priority header: an integer, lower served first inside the caller's own
    share (it never moves a request ahead of another tenant's); 0 if absent."""
    if value is None:
        return 0
    priority = int(value)
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"{PRIORITY_HEADER} must be an integer in [-{MAX_PRIORITY}, "
                         f"{MAX_PRIORITY}]")
    return priority


def parse_timeout(value: str | None) -> float | None:
    """The x-request-timeout header: a positive number of seconds; None if absent. Raises
    ValueError (the server answers 400) for anything else."""
    if value is None:
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{TIMEOUT_HEADER} must be a positive number of seconds")
    return seconds


class DrainMeter:
    """Prompt tokens per second leaving the queue, over the last `window_s` seconds."""

    def __init__(self, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._events: deque[tuple[float, int]] = deque()

    def record(self, num_tokens: int) -> None:
        self._events.append((self.clock(), num_tokens))

    def rate(self) -> float | None:
        """None until two starts fall in the window. The first event only opens the interval
        (its tokens were computed before it), and the interval runs to now, so a stalled
        engine's rate decays instead of freezing at its last good value."""
        now = self.clock()
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()
        if len(self._events) < 2:
            return None
        first_time = self._events[0][0]
        span = max(now - first_time, 1e-3)
        return sum(n for _, n in list(self._events)[1:]) / span


class Ticket:
    """The admitted share of one HTTP request: one entry per engine request (prompt).

    The server calls `observe(index, out)` on every output (the first one marks the prompt
    started: its queue slot is returned and its tokens counted as drained) and `release()`
    however the request ends. Release callbacks get the tokens used (prompt + generated,
    over all prompts), for settling the token quota. `engine_args` are the keyword arguments
    the request's engine calls take (its tenant, priority and weight in the fair queue).
    """

    def __init__(self, controller: "AdmissionController", prompt_lens: list[int],
                 deadline_s: float | None = None) -> None:
        self._controller = controller
        self._pending = dict(enumerate(prompt_lens))
        self._used: dict[int, int] = {}
        self._on_release: list[Callable[[int], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._expires_at = None if deadline_s is None else controller.clock() + deadline_s
        self.engine_args: dict = {}
        self.is_expired = False
        self.is_released = False

    @property
    def num_tokens_used(self) -> int:
        return sum(self._used.values())

    @property
    def is_queued(self) -> bool:
        return bool(self._pending)

    @property
    def seconds_left(self) -> float | None:
        """Until the request's deadline (negative once past); None: it has none."""
        return None if self._expires_at is None else self._expires_at - self._controller.clock()

    def mark_started(self, index: int) -> None:
        num_tokens = self._pending.pop(index, None)
        if num_tokens is not None:
            self._controller._started(num_tokens)
            if not self._pending:
                self._cancel_timer()

    def observe(self, index: int, out) -> None:
        """`out`: a frontend RequestOutput (cumulative token counts). A request the engine
        rejected used nothing."""
        self.mark_started(index)
        if not getattr(out, "error", None):
            self._used[index] = out.num_prompt_tokens + out.num_generated_tokens

    def on_release(self, callback: Callable[[int], None]) -> None:
        self._on_release.append(callback)

    def on_expire(self, callback: Callable[[], None]) -> None:
        """Run `callback` at the deadline if a prompt is still queued then. No deadline: never.
        Call from the event loop that serves the request."""
        if self._expires_at is None or self._timer is not None:
            return

        def fire() -> None:
            self._timer = None
            if self._pending and not self.is_released:
                self.is_expired = True
                callback()

        delay = max(0.0, self._expires_at - self._controller.clock())
        self._timer = asyncio.get_running_loop().call_later(delay, fire)

    def release(self) -> None:
        """Give back the queue slots of prompts that never started; run the callbacks once."""
        if self.is_released:
            return
        self.is_released = True
        self._cancel_timer()
        for index in list(self._pending):
            self._controller._forget(self._pending.pop(index))
        for callback in self._on_release:
            callback(self.num_tokens_used)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AdmissionController:
    def __init__(self, config: AdmissionConfig, stats: Callable[[], EngineStats],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._stats = stats
        self.meter = DrainMeter(config.drain_window_s, clock)
        self.num_waiting = 0  # admitted here, not started yet
        self.num_waiting_prompt_tokens = 0

    def admit(self, prompt_lens: list[int], deadline_s: float | None = None) -> Ticket | Refusal:
        refusal = self.check(prompt_lens, deadline_s)
        if refusal is not None:
            return refusal
        self.num_waiting += len(prompt_lens)
        self.num_waiting_prompt_tokens += sum(prompt_lens)
        return Ticket(self, prompt_lens, deadline_s)

    def check(self, prompt_lens: list[int], deadline_s: float | None = None) -> Refusal | None:
        """Why this request should not be queued now, or None."""
        cfg = self.config
        stats = self._stats()
        waiting = max(self.num_waiting, stats.num_waiting)
        backlog = max(self.num_waiting_prompt_tokens, stats.num_waiting_prompt_tokens)
        if waiting + len(prompt_lens) > cfg.max_waiting_requests:
            per_request = backlog / waiting if waiting else 1.0
            excess = (waiting + len(prompt_lens) - cfg.max_waiting_requests) * per_request
            return self._refuse(f"{waiting} requests are already waiting (limit "
                                f"{cfg.max_waiting_requests})", excess)
        # An empty queue always admits: a request larger than a budget would otherwise be
        # refused forever with a Retry-After that can never come true.
        if not waiting:
            return None
        new_tokens = sum(prompt_lens)
        if backlog + new_tokens > cfg.max_waiting_prompt_tokens:
            return self._refuse(f"{backlog} prompt tokens are already waiting (limit "
                                f"{cfg.max_waiting_prompt_tokens})",
                                backlog + new_tokens - cfg.max_waiting_prompt_tokens)
        refusal = self._check_kv(stats, backlog, prompt_lens)
        if refusal is not None:
            return refusal
        return self._check_delay(backlog, deadline_s)

    def _check_kv(self, stats: EngineStats, backlog: int,
                  prompt_lens: list[int]) -> Refusal | None:
        bs = self.config.block_size
        queued_blocks = math.ceil(backlog / bs)
        new_blocks = sum(math.ceil(n / bs) for n in prompt_lens)
        allowed = stats.num_free_blocks + self.config.max_waiting_kv_caches * stats.num_total_blocks
        if queued_blocks + new_blocks <= allowed:
            return None
        return self._refuse(
            f"the queued prompts need {queued_blocks} KV blocks and this one {new_blocks}, "
            f"more than the {stats.num_free_blocks} free of {stats.num_total_blocks} can "
            f"take in {self.config.max_waiting_kv_caches:g} cache turnovers",
            (queued_blocks + new_blocks - allowed) * bs)

    def _check_delay(self, backlog: int, deadline_s: float | None) -> Refusal | None:
        rate = self.meter.rate()
        if rate is None:
            return None
        expected_wait = backlog / rate
        limit = self.config.max_queue_delay_s
        if deadline_s is not None and deadline_s < limit:
            limit = deadline_s
        if expected_wait <= limit:
            return None
        return self._refuse(f"the queue needs about {expected_wait:.1f}s to drain, more than "
                            f"{limit:g}s", backlog - rate * limit)

    def _refuse(self, why: str, excess_tokens: float) -> Refusal:
        rate = self.meter.rate()
        wait = self.config.retry_after_s if not rate else excess_tokens / rate
        wait = min(MAX_RETRY_AFTER_S, max(1.0, wait))
        return Refusal(503, f"The server is overloaded: {why}. Please retry later.",
                       "server_overloaded", {"retry-after": str(math.ceil(wait))})

    def _started(self, num_tokens: int) -> None:
        self._forget(num_tokens)
        self.meter.record(num_tokens)

    def _forget(self, num_tokens: int) -> None:
        self.num_waiting -= 1
        self.num_waiting_prompt_tokens -= num_tokens
