"""Per-key quotas: requests per minute, tokens per minute and concurrent requests.

One limiter, written once against quotas.store's CounterStore (in-process or Redis):

- `reserve(key_id, limits, num_tokens)` charges 1 request, `num_tokens` tokens (the server
  passes prompt + max_tokens, the most the request can use) and one concurrency lease, all
  or nothing, and returns a `Reservation` or a 429 `Refusal` with Retry-After.
- `settle(reservation, num_tokens_used)` corrects the token charge to the real usage (a
  refund, usually) and gives the lease back. The server calls it however the request ends:
  finished, failed, or abandoned by its client.

Both carry OpenAI's headers: x-ratelimit-{limit,remaining,reset}-{requests,tokens}, computed
from the counter state the store returned. Limits that are None are not enforced and get no
headers. `RateLimitHeaders` is the ASGI middleware that puts them on every response.
The clock is injected (wall time by default; tests pass a fake one): every process sharing a
Redis quota must read the same kind of clock.
Imports the standard library, quotas.store, gateway.engine_admission (Refusal) and
gateway.auth.keys; the middleware is plain ASGI.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cormorant.gateway.auth.keys import Principal
from cormorant.gateway.engine_admission import Refusal
from cormorant.gateway.quotas.store import (CounterStore, LeaseClaim, Window, WindowCharge,
                                            WindowState)

logger = logging.getLogger("cormorant.gateway")

# Where the server leaves a request's header values for RateLimitHeaders (scope["state"]).
STATE_HEADERS = "ratelimit_headers"
STORE_WARNING_INTERVAL_S = 10.0


@dataclass(frozen=True)
class QuotaLimits:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"quota {name} must be at least 1 (or None: unlimited)")

    @property
    def is_unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrent is None

    def or_defaults(self, defaults: "QuotaLimits") -> "QuotaLimits":
        """Fill the limits this key leaves unset from the server's defaults."""
        return QuotaLimits(*(mine if mine is not None else default for mine, default in (
            (self.rpm, defaults.rpm), (self.tpm, defaults.tpm),
            (self.max_concurrent, defaults.max_concurrent))))


@dataclass
class Reservation:
    """What one admitted request holds until it is settled."""

    key_id: str
    limits: QuotaLimits
    num_tokens: int  # charged to the tpm window at admission
    bucket: int  # the window bucket the charge went to (settlement corrects that bucket)
    lease_id: str | None  # the concurrency slot, if max_concurrent is set
    headers: dict[str, str] = field(default_factory=dict)
    is_settled: bool = False


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: '250ms', '1s', '6m0s', '1.5s'."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    secs = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{secs}s" if minutes else f"{secs}s"


def retry_after_headers(seconds: float) -> dict[str, str]:
    """Retry-After in whole seconds (HTTP's unit, at least 1) plus OpenAI's retry-after-ms."""
    return {"retry-after": str(max(1, math.ceil(seconds))),
            "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


class Quotas:
    def __init__(self, store: CounterStore, clock: Callable[[], float] = time.time, *,
                 window: Window = Window(), lease_ttl_s: float = 900.0,
                 fail_open: bool = True) -> None:
        """lease_ttl_s: a concurrency slot not released by then (its process died) frees
        itself; a request running longer than this stops counting against max_concurrent.
        fail_open: when the store is unreachable, admit without quotas (and log) rather
        than refuse everyone with 503."""
        self.store = store
        self.clock = clock
        self.window = window
        self.lease_ttl_s = lease_ttl_s
        self.fail_open = fail_open
        self._last_warning = -math.inf

    async def reserve(self, key_id: str, limits: QuotaLimits,
                      num_tokens: int) -> Reservation | Refusal:
        now = self.clock()
        # Charges nothing, so settling it touches no counter.
        unmetered = Reservation(key_id, QuotaLimits(), 0, self.window.bucket(now), None)
        if limits.is_unlimited:
            return unmetered
        if limits.tpm is not None and num_tokens > limits.tpm:
            return await self._too_large(key_id, limits, num_tokens, now)
        charges = _charges(key_id, limits, 1, num_tokens)
        claims = ([LeaseClaim(f"{{{key_id}}}:conc", limits.max_concurrent, uuid.uuid4().hex)]
                  if limits.max_concurrent is not None else [])
        try:
            result = await self.store.acquire(self.window, now, charges, claims,
                                              self.lease_ttl_s)
        except Exception as exc:  # redis down, timeout: a policy decision, not a crash
            return self._store_failed(exc, unmetered)
        headers = self._headers(limits, result.windows, now)
        if not result.is_ok:
            return self._refusal(key_id, limits, charges, result, headers, now)
        return Reservation(key_id, limits, num_tokens if limits.tpm is not None else 0,
                           self.window.bucket(now), claims[0].lease_id if claims else None,
                           headers)

    async def settle(self, reservation: Reservation, num_tokens_used: int | None) -> None:
        """Correct the token charge to `num_tokens_used` (None: keep the reservation) and
        release the concurrency slot. Idempotent; store errors are logged, not raised (the
        lease TTL and the window expiry repair what a lost settlement leaves)."""
        delta = (0 if num_tokens_used is None or reservation.limits.tpm is None
                 else num_tokens_used - reservation.num_tokens)
        await self._undo(reservation, delta, 0)

    async def cancel(self, reservation: Reservation) -> None:
        """Undo a reservation whose request never ran (refused after reserving): the request,
        its tokens and its slot all come back."""
        await self._undo(reservation, -reservation.num_tokens,
                         -1 if reservation.limits.rpm is not None else 0)

    async def _undo(self, reservation: Reservation, token_delta: int,
                    request_delta: int) -> None:
        if reservation.is_settled:
            return
        reservation.is_settled = True
        key_id, now = reservation.key_id, self.clock()
        try:
            if reservation.lease_id is not None:
                await self.store.release(f"{{{key_id}}}:conc", reservation.lease_id)
            for name, delta in (("tpm", token_delta), ("rpm", request_delta)):
                if delta:
                    await self.store.adjust(self.window, now, f"{{{key_id}}}:{name}",
                                            reservation.bucket, delta)
        except Exception:
            logger.exception("settling the quota of key %s failed", key_id)

    async def headers(self, key_id: str, limits: QuotaLimits) -> dict[str, str]:
        """The x-ratelimit headers as they stand, charging nothing."""
        if limits.rpm is None and limits.tpm is None:
            return {}
        now = self.clock()
        try:
            result = await self.store.acquire(self.window, now, _charges(key_id, limits, 0, 0),
                                              [], self.lease_ttl_s)
        except Exception as exc:
            self._warn(f"quota store unreachable ({exc}); no x-ratelimit headers")
            return {}
        return self._headers(limits, result.windows, now)

    # -- helpers ----------------------------------------------------------------------------
    def _headers(self, limits: QuotaLimits, states: list[WindowState],
                 now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        named = [(n, lim) for n, lim in (("requests", limits.rpm), ("tokens", limits.tpm))
                 if lim is not None]
        for (name, limit), state in zip(named, states):
            reset = self.window.expiry(state.buckets[-1][0]) - now if state.buckets else 0.0
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, limit - state.total))
            headers[f"x-ratelimit-reset-{name}"] = format_duration(reset)
        return headers

    def _wait_for(self, state: WindowState, limit: int, amount: int, now: float) -> float:
        """Seconds until `amount` more fits under `limit`, as the oldest buckets expire."""
        excess = state.total + amount - limit
        for bucket, bucket_amount in state.buckets:
            excess -= bucket_amount
            if excess <= 0:
                return max(0.0, self.window.expiry(bucket) - now)
        return self.window.window_s

    def _refusal(self, key_id: str, limits: QuotaLimits, charges: list[WindowCharge],
                 result, headers: dict[str, str], now: float) -> Refusal:
        reasons, wait = [], 0.0
        for charge, state in zip(charges, result.windows):
            if state.total + charge.amount > charge.limit:
                what = "requests" if charge.key.endswith(":rpm") else "tokens"
                reasons.append(f"{what} per minute: limit {charge.limit}, used {state.total}, "
                               f"requested {charge.amount}")
                wait = max(wait, self._wait_for(state, charge.limit, charge.amount, now))
        if result.num_leases and result.num_leases[0] >= (limits.max_concurrent or 0):
            reasons.append(f"concurrent requests: limit {limits.max_concurrent}")
            wait = max(wait, 1.0)  # a slot frees when some request ends: unknowable, retry soon
        message = (f"Rate limit reached for key {key_id} on {'; '.join(reasons)}. "
                   f"Please try again in {format_duration(wait)}.")
        return Refusal(429, message, "rate_limit_exceeded",
                       {**headers, **retry_after_headers(wait)})

    async def _too_large(self, key_id: str, limits: QuotaLimits, num_tokens: int,
                         now: float) -> Refusal:
        headers = await self.headers(key_id, limits)
        message = (f"Request too large for key {key_id} on tokens per minute: limit "
                   f"{limits.tpm}, requested {num_tokens} (prompt plus max_tokens). Reduce "
                   "the prompt or max_tokens.")
        return Refusal(429, message, "request_too_large",
                       {**headers, **retry_after_headers(self.window.window_s)})

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= STORE_WARNING_INTERVAL_S:  # now and then, not per request
            self._last_warning = now
            logger.warning(message)

    def _store_failed(self, exc: Exception, unmetered: Reservation) -> Reservation | Refusal:
        self._warn(f"quota store unreachable ({exc}); "
                   + ("admitting without quotas" if self.fail_open else "refusing"))
        if self.fail_open:
            return unmetered
        return Refusal(503, "The quota service is unavailable. Please retry later.",
                       "quota_unavailable", retry_after_headers(1))


def _charges(key_id: str, limits: QuotaLimits, num_requests: int,
             num_tokens: int) -> list[WindowCharge]:
    # The {key_id} hash tag keeps one key's counters in one Redis Cluster slot, which a
    # multi-key Lua script requires.
    charges = []
    if limits.rpm is not None:
        charges.append(WindowCharge(f"{{{key_id}}}:rpm", limits.rpm, num_requests))
    if limits.tpm is not None:
        charges.append(WindowCharge(f"{{{key_id}}}:tpm", limits.tpm, num_tokens))
    return charges


def limits_of(principal, defaults: QuotaLimits) -> QuotaLimits:
    """A caller's limits (a gateway.auth.keys.Principal): its key's own, the server's defaults
    where the key sets none."""
    return QuotaLimits(principal.rpm, principal.tpm,
                       principal.max_concurrent).or_defaults(defaults)


class RateLimitHeaders:
    """ASGI middleware, inside authentication: the x-ratelimit headers on every response to a
    caller with quotas. A generation route leaves the values it got from `reserve` in
    scope["state"][STATE_HEADERS]; any other response (or an error before the reservation)
    reads the counters as they stand. Headers already on the response (a 429's) win."""

    def __init__(self, app, quotas: Quotas, defaults: QuotaLimits) -> None:
        self.app = app
        self.quotas = quotas
        self.defaults = defaults
        self.anonymous = Principal.anonymous()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = state.get(STATE_HEADERS)
                # No principal: auth is off, everyone is the anonymous caller. One without
                # scopes: an unauthenticated probe, which has no quota to report.
                principal = state.get("principal") or self.anonymous
                if headers is None and principal.scopes:
                    headers = await self.quotas.headers(principal.key_id,
                                                        limits_of(principal, self.defaults))
                if headers:
                    present = {name.lower() for name, _ in message.get("headers", ())}
                    extra = [(k.encode("latin-1"), v.encode("latin-1"))
                             for k, v in headers.items() if k.encode("latin-1") not in present]
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
