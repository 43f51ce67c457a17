"""The Redis store under real concurrency: several OS processes race for one key's quota on a
real redis-server, and the Lua scripts must let exactly the limit through. Also: keys expire
by themselves, and the Redis store agrees with the in-process one op for op."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from cormorant.gateway.quotas.redis_store import RedisStore
from cormorant.gateway.quotas.store import LeaseClaim, MemoryStore, Window, WindowCharge
from redis_fixture import redis_prefix, redis_server, redis_url  # noqa: F401

# Each process: `attempts` reservations as fast as it can, holding each concurrency slot for a
# moment; prints how many were admitted and the most leases it ever saw held.
RACER = """
import asyncio, json, sys, time
from cormorant.gateway.quotas.quotas import QuotaLimits, Quotas, Reservation
from cormorant.gateway.quotas.redis_store import RedisStore

async def main(url, prefix, attempts, start_at):
    store = RedisStore.from_url(url, prefix=prefix)
    quotas = Quotas(store)
    limits = QuotaLimits(rpm=150, tpm=10**9, max_concurrent=3)
    while time.time() < start_at:
        await asyncio.sleep(0.001)
    admitted = most = 0
    for _ in range(attempts):
        got = await quotas.reserve("shared", limits, 10)
        if isinstance(got, Reservation):
            admitted += 1
            held = await store.client.zcard(prefix + "{shared}:conc")
            most = max(most, held)
            await asyncio.sleep(0.002)
            await quotas.settle(got, 10)
    await store.aclose()
    print(json.dumps({"admitted": admitted, "most_held": most}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


def test_processes_racing_for_one_quota_admit_exactly_the_limit(redis_url, redis_prefix):
    start_at = time.time() + 3.0  # all processes imported and connected by then
    procs = [subprocess.Popen([sys.executable, "-c", RACER, redis_url, redis_prefix, "120",
                               str(start_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["admitted"] for r in results) == 150  # 480 attempts, rpm 150
    assert max(r["most_held"] for r in results) <= 3
    assert all(r["admitted"] > 0 for r in results)


def test_keys_expire_by_themselves(redis_url, redis_prefix):
    window = Window(window_s=1.0, num_buckets=10)

    async def scenario():
        store = RedisStore.from_url(redis_url, prefix=redis_prefix)
        try:
            now = time.time()
            await store.acquire(window, now, [WindowCharge("w", 10, 1)],
                                [LeaseClaim("l", 1, "lease")], lease_ttl_s=0.5)
            ttl_w = await store.client.pttl(redis_prefix + "w")
            ttl_l = await store.client.pttl(redis_prefix + "l")
            return ttl_w, ttl_l
        finally:
            await store.aclose()

    ttl_w, ttl_l = asyncio.run(scenario())
    assert 0 < ttl_w <= 1200 and 0 < ttl_l <= 1500


def test_redis_and_memory_agree_op_for_op(redis_url, redis_prefix):
    """The same random script of acquires, adjusts and releases gives identical results."""
    import random

    window = Window(window_s=10.0, num_buckets=20)

    async def play(store) -> list:
        rng = random.Random(7)
        now, trace = 1000.0, []
        leases: list[str] = []
        for step in range(400):
            now += rng.choice([0.0, 0.05, 0.3, 1.0, 4.0])
            op = rng.random()
            if op < 0.6:
                charges = [WindowCharge("a", 20, rng.randint(0, 3)),
                           WindowCharge("b", 50, rng.randint(0, 9))]
                claims = [LeaseClaim("c", 3, f"l{step}")] if rng.random() < 0.5 else []
                result = await store.acquire(window, now, charges, claims, lease_ttl_s=5.0)
                if result.is_ok and claims:
                    leases.append(f"l{step}")
                trace.append((result.is_ok, [w.buckets for w in result.windows],
                              result.num_leases))
            elif op < 0.8:
                await store.adjust(window, now, "b", window.bucket(now) - rng.randint(0, 25),
                                   rng.randint(-5, 3))
            elif leases:
                await store.release("c", leases.pop(rng.randrange(len(leases))))
        return trace

    async def scenario():
        redis_store = RedisStore.from_url(redis_url, prefix=redis_prefix)
        try:
            return await play(MemoryStore()), await play(redis_store)
        finally:
            await redis_store.aclose()

    memory_trace, redis_trace = asyncio.run(scenario())
    assert memory_trace == redis_trace
    assert any(not ok for ok, _, _ in memory_trace) and any(ok for ok, _, _ in memory_trace)
