"""The counter store in Redis, for quotas shared by several server processes or replicas.

Same semantics as quotas.store.MemoryStore, op for op; each op is one Lua script, which Redis
runs atomically, so two processes can never both take the last unit of a quota. A window
counter is a hash {bucket index: amount}; a lease set is a sorted set {lease id: expiry}.
Every key gets a TTL a little past its last use, so idle keys vanish from Redis by themselves.

Times come from the caller's clock (see gateway.quotas.store), so the processes sharing a quota
need roughly synchronised clocks (NTP); an error of e.g. 50 ms shifts a bucket boundary by
that much, which the bucketed window absorbs.
Imports redis (the asyncio client) and gateway.quotas.store. One RedisStore per event loop: the
asyncio client's connections belong to the loop that opened them.
"""
from __future__ import annotations

import asyncio
import math
from urllib.parse import urlsplit, urlunsplit

from cormorant.gateway.quotas.store import (AcquireResult, LeaseClaim, Window, WindowCharge,
                                            WindowState)

# KEYS: window counters, then lease sets.
# ARGV: #windows, #leases, bucket, min_live, window ttl ms, now, lease expiry, lease ttl ms,
#       then (limit, amount) per window, then (limit, lease id) per lease set.
_ACQUIRE = """
local nw, nl = tonumber(ARGV[1]), tonumber(ARGV[2])
local bucket, min_live = ARGV[3], tonumber(ARGV[4])
local window_ttl, now, expiry, lease_ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ok = 1
local states, counts = {}, {}
for i = 1, nw do
  local flat = redis.call('HGETALL', KEYS[i])
  local live, total = {}, 0
  for j = 1, #flat, 2 do
    if tonumber(flat[j]) < min_live then
      redis.call('HDEL', KEYS[i], flat[j])
    else
      total = total + tonumber(flat[j + 1])
      live[#live + 1] = flat[j]
      live[#live + 1] = flat[j + 1]
    end
  end
  if total + tonumber(ARGV[8 + 2 * i]) > tonumber(ARGV[7 + 2 * i]) then ok = 0 end
  states[i] = live
end
for i = 1, nl do
  local key = KEYS[nw + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  counts[i] = redis.call('ZCARD', key)
  if counts[i] + 1 > tonumber(ARGV[7 + 2 * nw + 2 * i]) then ok = 0 end
end
if ok == 1 then
  for i = 1, nw do
    local amount = tonumber(ARGV[8 + 2 * i])
    if amount ~= 0 then
      local value = redis.call('HINCRBY', KEYS[i], bucket, amount)
      redis.call('PEXPIRE', KEYS[i], window_ttl)
      local live, found = states[i], false
      for j = 1, #live, 2 do
        if live[j] == bucket then live[j + 1] = tostring(value); found = true end
      end
      if not found then
        live[#live + 1] = bucket
        live[#live + 1] = tostring(value)
      end
    end
  end
  for i = 1, nl do
    local key = KEYS[nw + i]
    redis.call('ZADD', key, expiry, ARGV[8 + 2 * nw + 2 * i])
    redis.call('PEXPIRE', key, lease_ttl)
    counts[i] = counts[i] + 1
  end
end
return {ok, states, counts}
"""

# KEYS: the window counter. ARGV: bucket, min_live, delta.
_ADJUST = """
if tonumber(ARGV[1]) < tonumber(ARGV[2]) then return 0 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local value = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[3])
if value <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""


class RedisStore:
    """A CounterStore on one Redis server. `prefix` namespaces the keys (several clusters or
    test runs can share a server)."""

    def __init__(self, client, prefix: str = "cormorant:quota:") -> None:
        self.client = client
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._adjust = client.register_script(_ADJUST)

    @classmethod
    def from_url(cls, url: str, prefix: str = "cormorant:quota:") -> "RedisStore":
        import redis.asyncio

        # Short timeouts: a quota check waits on Redis in every request's path.
        client = redis.asyncio.Redis.from_url(url, socket_timeout=2.0,
                                              socket_connect_timeout=2.0)
        return cls(client, prefix)

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def acquire(self, window: Window, now: float, charges: list[WindowCharge],
                      claims: list[LeaseClaim], lease_ttl_s: float) -> AcquireResult:
        keys = [self.prefix + c.key for c in charges] + [self.prefix + c.key for c in claims]
        # A counter outlives its newest bucket by one bucket; a lease set its newest lease.
        window_ttl_ms = math.ceil((window.window_s + 2 * window.bucket_s) * 1000)
        args: list = [len(charges), len(claims), window.bucket(now), window.min_live(now),
                      window_ttl_ms, repr(now), repr(now + lease_ttl_s),
                      math.ceil(lease_ttl_s * 1000) + 1000]
        for charge in charges:
            args += [charge.limit, charge.amount]
        for claim in claims:
            args += [claim.limit, claim.lease_id]
        is_ok, states, counts = await self._acquire(keys=keys, args=args)
        windows = [WindowState(sorted((int(flat[j]), int(flat[j + 1]))
                                      for j in range(0, len(flat), 2))) for flat in states]
        return AcquireResult(bool(is_ok), windows, [int(n) for n in counts])

    async def adjust(self, window: Window, now: float, key: str, bucket: int,
                     delta: int) -> None:
        await self._adjust(keys=[self.prefix + key], args=[bucket, window.min_live(now), delta])

    async def release(self, key: str, lease_id: str) -> None:
        await self.client.zrem(self.prefix + key, lease_id)

    async def aclose(self) -> None:
        await self.client.aclose()


def redact(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def check_redis(url: str, timeout_s: float = 3.0) -> str | None:
    """Why the Redis at `url` cannot hold the quota counters, or None if it answers PING.
    Run before a server starts, so a wrong --redis fails at once rather than per request."""
    async def ping() -> None:
        store = RedisStore.from_url(url)
        try:
            await asyncio.wait_for(store.ping(), timeout_s)
        finally:
            await store.aclose()

    try:
        asyncio.run(ping())
    except ImportError:
        return "the redis package is not installed (pip install redis)"
    except Exception as exc:  # connection refused, auth, timeout, a malformed URL
        return f"cannot reach Redis at {redact(url)}: {type(exc).__name__}: {exc}"
    return None
