"""The response cache: canonical keys, the in-process LRU (TTL, count and byte bounds), and the
Redis backend on a real redis-server, including a Redis that is not there (misses, no raise)."""
from __future__ import annotations

import asyncio
import logging

import pytest

from cormorant.gateway.caching.response_cache import (MemoryCacheBackend, RedisCacheBackend,
                                                      ResponseCache, ResponseCacheConfig, cache_key,
                                                      is_deterministic)
from redis_fixture import redis_prefix, redis_server, redis_url  # noqa: F401

REQUEST = {"model": "m", "prompt": "Hello", "max_tokens": 16, "temperature": 0.0,
           "stop": ["\n"], "logit_bias": {"7": 1.5}}
BASE = {"tenant": "acme", "model_instance": "smol@1", "endpoint": "/v1/completions"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def key(**changes) -> str:
    args = {**BASE, "request": dict(REQUEST), **changes}
    return cache_key(**args)


def test_same_request_gives_the_same_key_whatever_the_dict_order():
    reordered = dict(reversed(list(REQUEST.items())))
    reordered["logit_bias"] = {"7": 1.5}
    assert key() == key(request=reordered) == key()
    assert len(key()) == 64 and int(key(), 16) >= 0


@pytest.mark.parametrize("change", [
    {"tenant": "other"}, {"model_instance": "smol@2"}, {"endpoint": "/v1/chat/completions"},
    {"request": {**REQUEST, "prompt": "Hello!"}}, {"request": {**REQUEST, "max_tokens": 17}},
    {"request": {**REQUEST, "stop": ["\n", "."]}}, {"request": {**REQUEST, "seed": 1}},
    {"request": {**REQUEST, "logit_bias": {"7": 1.25}}},
    {"request": {**REQUEST, "prompt": "Héllo"}},
])
def test_any_difference_gives_another_key(change):
    assert key(**change) != key()


def test_is_deterministic():
    assert is_deterministic(0.0, None) and is_deterministic(0, None)
    assert is_deterministic(0.7, 42) and is_deterministic(None, 0)
    assert not is_deterministic(None, None) and not is_deterministic(0.7, None)


def test_memory_entries_expire_after_their_ttl():
    clock = Clock()
    backend = MemoryCacheBackend(clock=clock)

    async def go():
        await backend.set("k", b"v", ttl_s=10.0)
        clock.now += 9.9
        assert await backend.get("k") == b"v"
        clock.now += 0.2
        assert await backend.get("k") is None
        assert len(backend) == 0 and backend.num_bytes == 0

    asyncio.run(go())


def test_memory_evicts_least_recently_used_past_max_entries():
    backend = MemoryCacheBackend(max_entries=3)

    async def go():
        for k in "abc":
            await backend.set(k, k.encode(), 60)
        assert await backend.get("a") == b"a"  # now b is the least recently used
        await backend.set("d", b"d", 60)
        assert [await backend.get(k) for k in "abcd"] == [b"a", None, b"c", b"d"]
        assert len(backend) == 3

    asyncio.run(go())


def test_memory_evicts_past_max_bytes_and_refuses_oversize_values():
    backend = MemoryCacheBackend(max_bytes=100, max_entry_bytes=60)

    async def go():
        await backend.set("a", b"x" * 40, 60)
        await backend.set("b", b"y" * 40, 60)
        await backend.set("c", b"z" * 40, 60)  # 120 bytes > 100: a goes
        assert await backend.get("a") is None and backend.num_bytes == 80
        await backend.set("big", b"w" * 61, 60)
        assert await backend.get("big") is None and backend.num_bytes == 80
        await backend.set("b", b"short", 60)  # replacing frees the old value's bytes
        assert backend.num_bytes == 45 and await backend.get("b") == b"short"

    asyncio.run(go())


def test_response_cache_roundtrip_counts_and_oversize():
    cache = ResponseCache(ResponseCacheConfig(max_entry_bytes=200))
    body = {"id": "cmpl-1", "choices": [{"text": "héllo ✓", "index": 0}], "usage": {"n": 3}}

    async def go():
        assert await cache.get("k") is None
        assert await cache.put("k", body) is True
        assert await cache.get("k") == body
        assert await cache.put("big", {"text": "x" * 300}) is False
        assert await cache.get("big") is None
        await cache.aclose()

    asyncio.run(go())
    assert (cache.hits, cache.misses, cache.stores, cache.oversize) == (1, 2, 1, 1)


def test_redis_roundtrip_and_expiry(redis_url, redis_prefix):
    config = ResponseCacheConfig(ttl_s=0.2, redis_url=redis_url, redis_prefix=redis_prefix)

    async def go():
        cache = ResponseCache(config)
        assert isinstance(cache.backend, RedisCacheBackend)
        k = key()
        assert await cache.get(k) is None
        assert await cache.put(k, {"text": "héllo", "n": [1, 2]})
        assert await cache.get(k) == {"text": "héllo", "n": [1, 2]}
        ttl_ms = await cache.backend.client.pttl(redis_prefix + k)
        assert 0 < ttl_ms <= 200
        await asyncio.sleep(0.4)
        assert await cache.get(k) is None
        assert await cache.backend.client.exists(redis_prefix + k) == 0
        await cache.aclose()
        return cache

    cache = asyncio.run(go())
    assert (cache.hits, cache.misses, cache.stores) == (1, 2, 1)


def test_redis_oversize_value_is_not_stored(redis_url, redis_prefix):
    async def go():
        backend = RedisCacheBackend(redis_url, redis_prefix, max_entry_bytes=10)
        await backend.set("k", b"x" * 11, 60)
        assert await backend.get("k") is None
        await backend.set("k", b"x" * 10, 60)
        assert await backend.get("k") == b"x" * 10
        await backend.aclose()

    asyncio.run(go())


def test_unreachable_redis_gives_misses_without_raising(caplog):
    config = ResponseCacheConfig(redis_url="redis://127.0.0.1:1/0")

    async def go():
        cache = ResponseCache(config)
        assert await cache.put("k", {"a": 1}) is True  # stored as far as the caller knows
        assert await cache.get("k") is None
        assert await cache.get("k") is None
        await cache.aclose()
        return cache

    with caplog.at_level(logging.WARNING, logger="cormorant.gateway.caching.response_cache"):
        cache = asyncio.run(go())
    assert cache.hits == 0 and cache.misses == 2
    assert cache.backend.num_errors == 3
    warnings = [r for r in caplog.records if "Redis" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one warning, not one per request


def test_config_refuses_nonsense():
    with pytest.raises(ValueError):
        ResponseCacheConfig(ttl_s=0)
    with pytest.raises(ValueError):
        ResponseCacheConfig(max_entries=0)
