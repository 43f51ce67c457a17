"""Admission: the door every generation request passes after tokenization, two checks deep.

1. Engine state (gateway.engine_admission): 503 + Retry-After when the queue holds too many
   requests, prompt tokens or KV blocks, or would take longer than max_queue_delay_s (or the
   request's x-request-timeout) to drain at the measured rate.
2. The caller's quotas (gateway.quotas): rpm, tpm (prompt + n * max_tokens reserved now,
   settled with the real usage when the request ends) and concurrent requests; 429 +
   Retry-After. The key's own limits, the server's defaults where it sets none.
   Batch lines (server.batch_lines marks their scope with BATCH_LINE) are counted apart,
   under the quota key "batch:<key id>" and the server's batch_rpm/batch_tpm/
   batch_max_concurrent, and enter the engine as its background class (BATCH_PRIORITY).

The engine check runs first because it is local and charges nothing, so an overloaded server
does not eat its callers' quota; it runs again after the reservation (an await, on Redis
perhaps) since the queue may have grown meanwhile, and a refusal then cancels the
reservation. The Ticket (gateway.engine_admission) carries the caller's tenant, priority
(x-request-priority) and weight to the engine's fair queue, its deadline, and settles the
quota when it is released, however the request ends.
Imports starlette, sampling_params, gateway.{engine_admission, quotas, auth} and server modules.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.requests import Request

from cormorant.engine.messages import EngineStats
from cormorant.engine.messages import BATCH_PRIORITY
from cormorant.gateway.auth.keys import Principal
from cormorant.gateway.engine_admission import (PRIORITY_HEADER, TIMEOUT_HEADER, AdmissionConfig,
                                                AdmissionController, Refusal, Ticket,
                                                parse_priority, parse_timeout)
from cormorant.gateway.quotas.quotas import (STATE_HEADERS, QuotaLimits, Quotas, Reservation,
                                             limits_of)
from cormorant.sampling_params import SamplingParams
from cormorant.server.config import ServerConfig
from cormorant.server.errors import APIError

__all__ = ["Admission", "Ticket", "BATCH_LINE"]
BATCH_LINE = "cormorant.batch_line"  # scope["state"] key: this request is a batch line


def quota_defaults(config: ServerConfig) -> QuotaLimits:
    return QuotaLimits(config.default_rpm, config.default_tpm, config.default_max_concurrent)


def batch_limits(config: ServerConfig) -> QuotaLimits:
    return QuotaLimits(config.batch_rpm, config.batch_tpm, config.batch_max_concurrent)


def quota_subject(state: dict, principal: Principal, defaults: QuotaLimits,
                  config_batch: QuotaLimits | None) -> tuple[str, QuotaLimits]:
    """(quota key, limits): the caller's own, or its separate batch account."""
    if state.get(BATCH_LINE) and config_batch is not None:
        return f"batch:{principal.key_id}", config_batch
    return principal.key_id, limits_of(principal, defaults)


class Admission:
    def __init__(self, config: ServerConfig, stats: Callable[[], EngineStats],
                 quotas: Quotas, block_size: int = 16) -> None:
        self.controller = AdmissionController(AdmissionConfig(
            max_waiting_requests=config.max_waiting_requests,
            max_waiting_prompt_tokens=config.max_waiting_prompt_tokens,
            max_waiting_kv_caches=config.max_waiting_kv_caches,
            max_queue_delay_s=config.max_queue_delay_s, retry_after_s=config.retry_after_s,
            block_size=block_size), stats)
        self.quotas = quotas
        self.defaults = quota_defaults(config)
        self.batch_limits = batch_limits(config)
        self._settling: set[asyncio.Task] = set()

    @property
    def num_waiting(self) -> int:
        """Requests admitted here that have not started yet."""
        return self.controller.num_waiting

    @property
    def num_waiting_prompt_tokens(self) -> int:
        return self.controller.num_waiting_prompt_tokens

    async def admit(self, request: Request, prompt_lens: list[int],
                    params: list[SamplingParams]) -> Ticket:
        """A Ticket for the request's prompts (one SamplingParams each), or an APIError."""
        state = request.scope.setdefault("state", {})
        principal: Principal = state.get("principal") or Principal.anonymous()
        deadline_s, priority = _request_headers(request)
        if state.get(BATCH_LINE):
            priority = BATCH_PRIORITY
        refusal = self.controller.check(prompt_lens, deadline_s)
        if refusal is not None:
            raise _error(refusal)
        num_tokens = sum(prompt_lens) + sum(p.n * (p.max_tokens or 0) for p in params)
        key_id, limits = quota_subject(state, principal, self.defaults, self.batch_limits)
        reservation = await self.quotas.reserve(key_id, limits, num_tokens)
        if isinstance(reservation, Refusal):
            raise _error(reservation)
        state[STATE_HEADERS] = reservation.headers
        ticket = self.controller.admit(prompt_lens, deadline_s)
        if isinstance(ticket, Refusal):
            await self.quotas.cancel(reservation)
            raise _error(ticket)
        ticket.engine_args = {"tenant": principal.tenant, "priority": priority,
                              "weight": principal.weight}
        ticket.on_release(lambda used: self._settle(reservation, used))
        return ticket

    def _settle(self, reservation: Reservation, num_tokens_used: int) -> None:
        # Release runs in cleanup paths that cannot await; the task is kept until it is done.
        task = asyncio.ensure_future(self.quotas.settle(reservation, num_tokens_used))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)


@contextlib.asynccontextmanager
async def metered(request: Request, quotas: Quotas, defaults: QuotaLimits, num_tokens: int,
                  batch: QuotaLimits | None = None) -> AsyncIterator[None]:
    """The caller's quotas for work outside the generation engines (embeddings,
    classification): one request and `num_tokens` charged up front (429 + Retry-After when
    over), the concurrency slot held while the block runs."""
    state = request.scope.setdefault("state", {})
    principal: Principal = state.get("principal") or Principal.anonymous()
    key_id, limits = quota_subject(state, principal, defaults, batch)
    reservation = await quotas.reserve(key_id, limits, num_tokens)
    if isinstance(reservation, Refusal):
        raise _error(reservation)
    state[STATE_HEADERS] = reservation.headers
    try:
        yield
    finally:
        await quotas.settle(reservation, None)


def deadline_error(running: bool = False) -> APIError:
    """504 for a request whose x-request-timeout passed: still queued, or still running (then
    it was stopped, alone: the server and the other requests run on)."""
    if running:
        return APIError(504, f"The request did not finish before its {TIMEOUT_HEADER} passed; "
                        "it was stopped.", code="deadline_exceeded")
    return APIError(504, f"The request was still queued when its {TIMEOUT_HEADER} passed.",
                    code="deadline_exceeded")


def _request_headers(request: Request) -> tuple[float | None, int]:
    try:
        deadline_s = parse_timeout(request.headers.get(TIMEOUT_HEADER))
    except ValueError:
        raise APIError(400, f"The {TIMEOUT_HEADER} header must be a positive number of "
                       "seconds.", code="invalid_header") from None
    try:
        priority = parse_priority(request.headers.get(PRIORITY_HEADER))
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_header") from None
    return deadline_s, priority


def _error(refusal: Refusal) -> APIError:
    return APIError(refusal.status, refusal.message, code=refusal.code,
                    headers=dict(refusal.headers))
