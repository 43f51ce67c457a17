"""Response cache for deterministic requests (temperature 0 or a seed): in process or Redis.

The key is a sha256 over a canonical JSON of tenant, model instance, endpoint and the
normalized request, so two tenants never share an entry and any changed field is a new key.
Values are JSON bodies stored as UTF-8 bytes, with a TTL; a value over `max_entry_bytes` is not
stored. The Redis backend treats every Redis error as a miss (get) or a no-op (set) and logs it:
the cache must never break serving. One RedisCacheBackend per event loop (the asyncio client's
connections belong to the loop that opened them). With a data key (gateway.crypto) the stored
bodies are AES-GCM sealed, bound to their cache key; one that does not open (another key) is a
miss.
Imports the stdlib, sampling_params and gateway.crypto; redis (the asyncio client) lazily, when a Redis
backend is built.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Protocol

from cormorant.gateway.crypto import DataCipher, DataKeyError
from cormorant.sampling_params import is_greedy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResponseCacheConfig:
    ttl_s: float = 600.0
    max_entries: int = 10_000  # memory backend
    max_bytes: int = 64 * 1024 * 1024  # memory backend, sum of stored value sizes
    max_entry_bytes: int = 1024 * 1024  # larger values are not stored (both backends)
    redis_url: str | None = None  # None: in this process; else Redis
    redis_prefix: str = "cormorant:rc:"

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {self.ttl_s}")
        if self.max_entries < 1 or self.max_bytes < 1 or self.max_entry_bytes < 1:
            raise ValueError("max_entries, max_bytes and max_entry_bytes must be >= 1")


def cache_key(*, tenant: str, model_instance: str, endpoint: str, request: dict) -> str:
    """sha256 hex over a canonical JSON of {tenant, model_instance, endpoint, request}. The
    caller passes the already-normalized request (defaults filled in, stream, stream_options
    and user removed)."""
    doc = {"tenant": tenant, "model_instance": model_instance, "endpoint": endpoint,
           "request": request}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_deterministic(temperature: float | None, seed: int | None) -> bool:
    """True when the output is repeatable: greedy (as the engine decides it,
    sampling_params.is_greedy; None is the default temperature) or seeded."""
    return seed is not None or is_greedy(temperature)


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def aclose(self) -> None: ...


class MemoryCacheBackend:
    """LRU over an OrderedDict, bounded by entry count and by the sum of value sizes; TTL is
    checked on read. No awaits inside, so each op is atomic on its event loop."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024,
                 max_entry_bytes: int = 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        self.num_bytes = 0
        # key -> (expiry, value), least recently used first
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.num_bytes -= len(value)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if key in self._entries:
            self._drop(key)
        if ttl_s <= 0 or len(value) > min(self.max_entry_bytes, self.max_bytes):
            return
        self._entries[key] = (self.clock() + ttl_s, value)
        self.num_bytes += len(value)
        while len(self._entries) > self.max_entries or self.num_bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def aclose(self) -> None:
        self._entries.clear()
        self.num_bytes = 0


class RedisCacheBackend:
    """Values in Redis under `prefix` (SET key value PX ttl; GET). Errors are logged (at most
    one warning per `warn_every_s`) and become a miss or a no-op, never an exception."""

    def __init__(self, url: str, prefix: str = "cormorant:rc:", *, timeout_s: float = 1.0,
                 max_entry_bytes: int = 1024 * 1024, warn_every_s: float = 30.0) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # Short timeouts and no retries: a miss costs one generation, a stall every request.
        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0))
        self.prefix = prefix
        self.max_entry_bytes = max_entry_bytes
        self.warn_every_s = warn_every_s
        self.num_errors = 0
        self._last_warning = -float("inf")

    def _failed(self, op: str, exc: Exception) -> None:
        self.num_errors += 1
        now = time.monotonic()
        if now - self._last_warning >= self.warn_every_s:
            self._last_warning = now
            logger.warning("response cache: Redis %s failed (%d errors so far), serving "
                           "without the cache: %s: %s", op, self.num_errors,
                           type(exc).__name__, exc)

    async def get(self, key: str) -> bytes | None:
        try:
            return await self.client.get(self.prefix + key)
        except Exception as exc:  # connection refused, timeout, auth, OOM on the server
            self._failed("GET", exc)
            return None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        ttl_ms = int(ttl_s * 1000)
        if ttl_ms <= 0 or len(value) > self.max_entry_bytes:
            return
        try:
            await self.client.set(self.prefix + key, value, px=ttl_ms)
        except Exception as exc:
            self._failed("SET", exc)

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        except Exception as exc:
            self._failed("close", exc)


class ResponseCache:
    """JSON bodies by key over a backend (built from `config` when not given). Counts hits,
    misses, stores and values refused as oversize, for tests and metrics."""

    def __init__(self, config: ResponseCacheConfig, backend: CacheBackend | None = None,
                 cipher: DataCipher | None = None) -> None:
        self.config = config
        self.cipher = cipher or DataCipher()
        if backend is None:
            if config.redis_url:
                backend = RedisCacheBackend(config.redis_url, config.redis_prefix,
                                            max_entry_bytes=config.max_entry_bytes)
            else:
                backend = MemoryCacheBackend(config.max_entries, config.max_bytes,
                                             config.max_entry_bytes)
        self.backend = backend
        self.hits = self.misses = self.stores = self.oversize = 0

    async def get(self, key: str) -> dict | None:
        raw = await self.backend.get(key)
        value = None
        if raw is not None:
            try:
                value = json.loads(self.cipher.open_(raw, aad=key))
            except DataKeyError as exc:  # sealed under another key: a miss
                logger.warning("response cache: %s", exc)
            except ValueError:  # not ours, or truncated: a miss, not an error
                logger.warning("response cache: undecodable value under key %s", key)
        if not isinstance(value, dict):
            self.misses += 1
            return None
        self.hits += 1
        return value

    async def put(self, key: str, value: dict) -> bool:
        raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(raw) > self.config.max_entry_bytes:
            self.oversize += 1
            return False
        await self.backend.set(key, self.cipher.seal(raw, aad=key), self.config.ttl_s)
        self.stores += 1
        return True

    async def aclose(self) -> None:
        await self.backend.aclose()
