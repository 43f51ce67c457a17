"""Admission control: refuse new work (503 + Retry-After) while the wait queue is full.

Two budgets, both configurable: requests waiting for their first output, and the prompt tokens
they carry. The server's own count (admitted here, no output yet) is exact and race-free on
the event loop; the engine's view adds requests it has pushed back to waiting (preemption).
A request is "waiting" until its first output arrives; its Ticket then gives the slot back.
This is the seam the gateway's quotas and fair queueing will grow from.
Imports server.config, server.errors and server.engine_client (types only).
"""
from __future__ import annotations

from collections.abc import Callable

from cormorant.server.config import ServerConfig
from cormorant.server.engine_client import EngineStatsLike
from cormorant.server.errors import APIError


class Ticket:
    """The admitted share of one HTTP request: one entry per engine request (prompt)."""

    def __init__(self, admission: "Admission", prompt_lens: list[int]) -> None:
        self._admission = admission
        self._pending = dict(enumerate(prompt_lens))

    def mark_started(self, index: int) -> None:
        num_tokens = self._pending.pop(index, None)
        if num_tokens is not None:
            self._admission._release(1, num_tokens)

    def release(self) -> None:
        for index in list(self._pending):
            self.mark_started(index)


class Admission:
    def __init__(self, config: ServerConfig, stats: Callable[[], EngineStatsLike]) -> None:
        self.config = config
        self._stats = stats
        self.num_waiting = 0
        self.num_waiting_prompt_tokens = 0

    def admit(self, prompt_lens: list[int]) -> Ticket:
        cfg = self.config
        stats = self._stats()
        waiting = max(self.num_waiting, stats.num_waiting)
        waiting_tokens = max(self.num_waiting_prompt_tokens, stats.num_waiting_prompt_tokens)
        if waiting + len(prompt_lens) > cfg.max_waiting_requests:
            raise self._overloaded(f"{waiting} requests are already waiting (limit "
                                   f"{cfg.max_waiting_requests})")
        # An empty queue always admits, or a prompt larger than the token budget would be
        # refused forever with a Retry-After that can never come true.
        if waiting and waiting_tokens + sum(prompt_lens) > cfg.max_waiting_prompt_tokens:
            raise self._overloaded(f"{waiting_tokens} prompt tokens are already waiting (limit "
                                   f"{cfg.max_waiting_prompt_tokens})")
        self.num_waiting += len(prompt_lens)
        self.num_waiting_prompt_tokens += sum(prompt_lens)
        return Ticket(self, prompt_lens)

    def _release(self, num_requests: int, num_tokens: int) -> None:
        self.num_waiting -= num_requests
        self.num_waiting_prompt_tokens -= num_tokens

    def _overloaded(self, why: str) -> APIError:
        return APIError(503, f"The server is overloaded: {why}. Please retry later.",
                        code="server_overloaded",
                        headers={"retry-after": str(self.config.retry_after_s)})
