"""The counter store behind quotas: a three-operation interface and its in-process version.

Quota state is two kinds of counter, both updated atomically so that concurrent requests (or
several server processes, with the Redis store) can never both take the last unit:

- a *bucketed sliding window*: amounts charged per time bucket; a bucket stays live until its
  end plus the window has passed. Keeping a bucket up to one bucket-width longer than the
  exact sliding window only ever under-admits, so no window of `window_s` seconds can hold
  more than the limit. Buckets bound the state to `window_s / bucket_s` entries however
  heavy the traffic.
- a *lease set*: concurrency slots, each a lease id with an expiry, so the slots of a process
  that died come back by themselves after the lease TTL.

The limiter logic (which counters a request charges, the x-ratelimit headers, Retry-After)
lives once in gateway.quotas.quotas; a store only implements `acquire` (all-or-nothing charge),
`adjust` (settle a reservation) and `release` (give a lease back). `MemoryStore` does them
under a lock; gateway.quotas.redis_store does them in Lua scripts on one Redis server.

Callers pass bucket indices, not times, so no store does clock arithmetic of its own: every
process uses the clock the caller injected (tests: a fake one; servers: wall time).
Imports the standard library only.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Window:
    """The geometry of a sliding window: `num_buckets` buckets of `window_s / num_buckets`."""

    window_s: float = 60.0
    num_buckets: int = 120

    @property
    def bucket_s(self) -> float:
        return self.window_s / self.num_buckets

    def bucket(self, now: float) -> int:
        """The index of the bucket that `now` falls in."""
        return math.floor(now / self.bucket_s)

    def min_live(self, now: float) -> int:
        """The oldest bucket still counted at `now`: bucket i is live while
        (i + 1) * bucket_s + window_s > now."""
        return math.floor((now - self.window_s) / self.bucket_s)

    def expiry(self, bucket: int) -> float:
        """When bucket `bucket` stops counting."""
        return (bucket + 1) * self.bucket_s + self.window_s


@dataclass(frozen=True)
class WindowCharge:
    """Charge `amount` to the window counter `key`, provided the total stays <= `limit`."""

    key: str
    limit: int
    amount: int


@dataclass(frozen=True)
class LeaseClaim:
    """Take one slot of the lease set `key` (at most `limit` live leases) as `lease_id`."""

    key: str
    limit: int
    lease_id: str


@dataclass
class WindowState:
    """The live buckets of one window counter, oldest first: (bucket index, amount)."""

    buckets: list[tuple[int, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(amount for _, amount in self.buckets)


@dataclass
class AcquireResult:
    """`is_ok`: everything was charged. The states are as they stand after the call (charged
    when is_ok, untouched otherwise), one per charge and one lease count per claim."""

    is_ok: bool
    windows: list[WindowState]
    num_leases: list[int]


class CounterStore(Protocol):
    async def acquire(self, window: Window, now: float, charges: list[WindowCharge],
                      claims: list[LeaseClaim], lease_ttl_s: float) -> AcquireResult:
        """Atomically: drop expired buckets and leases; if every charge fits its limit and
        every lease set has a free slot, apply them all, else apply none."""
        ...

    async def adjust(self, window: Window, now: float, key: str, bucket: int,
                     delta: int) -> None:
        """Add `delta` (negative: a refund) to one bucket, if it is still live."""
        ...

    async def release(self, key: str, lease_id: str) -> None:
        """Give a lease back; a lease already expired or released is ignored."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """The embedded store of one process: dicts under a lock. A threading lock, not an
    asyncio one, because one store may serve several event loops (apps in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, dict[int, int]] = {}
        self._leases: dict[str, dict[str, float]] = {}

    async def acquire(self, window: Window, now: float, charges: list[WindowCharge],
                      claims: list[LeaseClaim], lease_ttl_s: float) -> AcquireResult:
        bucket, min_live = window.bucket(now), window.min_live(now)
        with self._lock:
            counters = [self._live_window(c.key, min_live) for c in charges]
            lease_sets = [self._live_leases(c.key, now) for c in claims]
            is_ok = (all(sum(b.values()) + c.amount <= c.limit
                         for b, c in zip(counters, charges))
                     and all(len(s) < c.limit for s, c in zip(lease_sets, claims)))
            if is_ok:
                for buckets, charge in zip(counters, charges):
                    if charge.amount:
                        buckets[bucket] = buckets.get(bucket, 0) + charge.amount
                        self._windows[charge.key] = buckets
                for leases, claim in zip(lease_sets, claims):
                    leases[claim.lease_id] = now + lease_ttl_s
                    self._leases[claim.key] = leases
            return AcquireResult(is_ok, [WindowState(sorted(b.items())) for b in counters],
                                 [len(s) for s in lease_sets])

    async def adjust(self, window: Window, now: float, key: str, bucket: int,
                     delta: int) -> None:
        with self._lock:
            buckets = self._live_window(key, window.min_live(now))
            if bucket not in buckets:
                return  # expired: the charge no longer counts, so neither does its refund
            value = buckets[bucket] + delta
            if value > 0:
                buckets[bucket] = value
            else:
                del buckets[bucket]
            if not buckets:
                self._windows.pop(key, None)

    async def release(self, key: str, lease_id: str) -> None:
        with self._lock:
            leases = self._leases.get(key)
            if leases is not None:
                leases.pop(lease_id, None)
                if not leases:
                    del self._leases[key]

    async def aclose(self) -> None:
        return None

    # Callers hold the lock. Empty counters are dropped so idle keys cost no memory.
    def _live_window(self, key: str, min_live: int) -> dict[int, int]:
        buckets = self._windows.get(key, {})
        for index in [i for i in buckets if i < min_live]:
            del buckets[index]
        if not buckets:
            self._windows.pop(key, None)
        return buckets

    def _live_leases(self, key: str, now: float) -> dict[str, float]:
        leases = self._leases.get(key, {})
        for lease_id in [i for i, expiry in leases.items() if expiry <= now]:
            del leases[lease_id]
        if not leases:
            self._leases.pop(key, None)
        return leases
