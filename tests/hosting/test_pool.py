"""Unit tests of hosting.pool.ModelPool with a small real loader (no engine): on-demand
single-flight loads, leases, swaps, reloads, drains, the memory budget and the idle TTL."""
from __future__ import annotations

import asyncio
import functools
import threading
import time
from pathlib import Path

import pytest

from cormorant.hosting.pool import LoadError, ModelNotFound, ModelPool
from cormorant.hosting.registry import ModelSpec, Registry, RegistryError, RegistrySettings


class Served:
    def __init__(self, loader: "Loader", model_id: str, instance: str, memory: int) -> None:
        self.loader, self.id, self.instance, self.memory_bytes = loader, model_id, instance, memory
        self.warmed, self.shutdowns = False, 0

    async def warm(self) -> None:
        self.loader.log.append(("warm", self.id))
        if (gate := self.loader.warm_gates.get(self.id)) is not None:
            await gate.wait()
        if self.id in self.loader.warm_fail:
            raise RuntimeError(f"{self.id} cannot answer")
        self.warmed = True

    def shutdown(self) -> None:
        if (gate := self.loader.shutdown_gates.get(self.id)) is not None:
            assert gate.wait(5)
        self.shutdowns += 1
        self.loader.log.append(("shutdown", self.id))


class Loader:
    """(spec, source, instance) -> Served; can fail, fail warm-up, or block on threading.Events."""

    def __init__(self, memory: int = 100) -> None:
        self.memory = memory  # bytes per model
        self.fail: set[str] = set()  # the loader raises
        self.warm_fail: set[str] = set()  # warm() raises
        self.gates: dict[str, threading.Event] = {}  # the load blocks until set
        self.warm_gates: dict[str, asyncio.Event] = {}
        self.shutdown_gates: dict[str, threading.Event] = {}
        self.calls: list[tuple[str, object]] = []  # (model id, source)
        self.served: list[Served] = []
        self.log: list[tuple[str, str]] = []  # ("warm" | "shutdown", model id)

    def __call__(self, spec: ModelSpec, source: Path | str, instance: str) -> Served:
        self.calls.append((spec.id, source))
        if (gate := self.gates.get(spec.id)) is not None:
            assert gate.wait(5), "test gate never opened"
        if spec.id in self.fail:
            raise OSError(f"bad weights for {spec.id}")
        self.served.append(served := Served(self, spec.id, instance, self.memory))
        return served

    def loads(self, model_id: str) -> int:
        return sum(1 for mid, _ in self.calls if mid == model_id)


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_pool(*ids: str, clock=None, **settings) -> tuple[ModelPool, Loader]:
    registry, loader = Registry(RegistrySettings(**settings)), Loader()
    for model_id in ids:
        name, _, version = model_id.partition("@")
        registry.add(ModelSpec(name=name, version=version, source="builtin:smollm2"))
    return ModelPool(registry, loader, **({"clock": clock} if clock else {})), loader


async def load(pool: ModelPool, clock: Clock, *steps: tuple[float, str]) -> None:
    for t, model_id in steps:
        clock.t = t
        await pool.ensure_loaded(model_id)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


def async_test(fn):
    """A plain pytest test running `fn` in asyncio.run (pytest-asyncio is not installed)."""
    @functools.wraps(fn)
    def test(*args, **kwargs) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 20))
    return test


# --- acquire, single flight, leases

@async_test
async def test_concurrent_acquires_load_once() -> None:
    pool, loader = make_pool("m@1")
    loader.gates["m@1"] = threading.Event()
    tasks = [asyncio.create_task(pool.acquire("m")) for _ in range(10)]
    await until(lambda: loader.calls)
    await asyncio.sleep(0.05)  # all ten are waiting on the one load
    assert "m@1" not in pool.deployments
    loader.gates["m@1"].set()
    leases = await asyncio.gather(*tasks)
    assert loader.calls == [("m@1", "builtin:smollm2")]
    dep = pool.deployments["m@1"]
    assert all(lease.deployment is dep for lease in leases)
    assert dep.served.warmed and dep.state == "ready" and dep.in_flight == 10
    for lease in leases:
        lease.release()
        lease.release()  # idempotent
    assert dep.in_flight == 0
    async with await pool.acquire("m@1") as d:
        assert d is dep and dep.in_flight == 1
    assert dep.in_flight == 0 and loader.loads("m@1") == 1
    with pytest.raises(ModelNotFound):
        await pool.acquire("nope")


@async_test
async def test_failed_single_flight_load_fails_every_waiter_and_can_be_retried() -> None:
    pool, loader = make_pool("m@1")
    loader.fail.add("m@1")
    loader.gates["m@1"] = threading.Event()
    tasks = [asyncio.create_task(pool.acquire("m")) for _ in range(5)]
    await until(lambda: loader.calls)
    loader.gates["m@1"].set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, LoadError) and "bad weights" in str(r) for r in results)
    assert loader.loads("m@1") == 1 and not pool.deployments
    loader.fail.clear()
    lease = await pool.acquire("m")
    assert loader.loads("m@1") == 2 and lease.deployment.served.warmed


@async_test
async def test_acquire_never_leases_a_deployment_retired_while_it_waited() -> None:
    pool, loader = make_pool("m@1")
    loader.gates["m@1"] = threading.Event()

    async def load_then_unload() -> None:
        await pool.ensure_loaded("m@1")
        await pool.unload("m@1", drain=False)

    admin = asyncio.create_task(load_then_unload())  # resumes first when the load ends
    request = asyncio.create_task(pool.acquire("m"))
    await until(lambda: loader.calls)
    loader.gates["m@1"].set()
    lease = await request
    await admin
    assert lease.deployment.state == "ready" and lease.deployment.served.shutdowns == 0
    assert pool.deployments["m@1"] is lease.deployment and loader.loads("m@1") == 2


# --- swaps

@async_test
async def test_set_alias_warms_the_new_version_before_routing_then_drains_the_old() -> None:
    pool, loader = make_pool("m@1", "m@2", drain_timeout_s=30)
    unloaded = []
    pool.on_unloaded.append(unloaded.append)
    await pool.set_alias("chat", {"m@1": 1})
    old = pool.deployments["m@1"]
    assert (held := await pool.acquire("chat")).deployment is old
    loader.gates["m@2"] = threading.Event()
    loader.warm_gates["m@2"] = asyncio.Event()
    swap = asyncio.create_task(pool.set_alias("chat", {"m@2": 1}))
    await until(lambda: loader.loads("m@2"))
    assert pool.registry.route("chat") == "m@1"  # loading: the old route stands
    async with await pool.acquire("chat") as during:
        assert during is old
    loader.gates["m@2"].set()
    await until(lambda: ("warm", "m@2") in loader.log)
    assert pool.registry.route("chat") == "m@1"  # warming: still the old route
    loader.warm_gates["m@2"].set()
    await swap
    assert (new := pool.deployments["m@2"]).served.warmed and pool.registry.route("chat") == "m@2"
    assert (await pool.acquire("chat")).deployment is new
    assert "m@1" not in pool.deployments and old.state == "draining"
    await asyncio.sleep(0.2)
    assert old.served.shutdowns == 0 and not unloaded  # a lease is still held
    held.release()
    await pool.wait_retired()
    assert old.served.shutdowns == 1 and old.state == "unloaded" and unloaded == [old]
    assert new.served.shutdowns == 0
    assert loader.log.index(("warm", "m@2")) < loader.log.index(("shutdown", "m@1"))


@async_test
async def test_set_alias_keeps_versions_other_aliases_use() -> None:
    pool, loader = make_pool("m@1", "m@2", "m@3")
    await pool.set_alias("a", {"m@1": 1})
    await pool.set_alias("b", {"m@1": 1})
    await pool.set_alias("a", {"m@2": 9, "m@3": 0})  # weight 0: registered, not loaded
    await pool.wait_retired()
    assert set(pool.deployments) == {"m@1", "m@2"} and loader.loads("m@3") == 0
    await pool.set_alias("b", {"m@2": 1}, unload_replaced=False)
    await pool.wait_retired()
    assert "m@1" in pool.deployments
    with pytest.raises(RegistryError, match="unknown model"):
        await pool.set_alias("a", {"m@9": 1})
    assert pool.registry.aliases["a"] == {"m@2": 9.0, "m@3": 0.0}


@pytest.mark.parametrize("failure", ["load", "warm"])
@async_test
async def test_failed_swap_changes_nothing(failure: str) -> None:
    pool, loader = make_pool("m@1", "m@2")
    await pool.set_alias("chat", {"m@1": 1})
    old = pool.deployments["m@1"]
    (loader.fail if failure == "load" else loader.warm_fail).add("m@2")
    with pytest.raises(LoadError, match="m@2 could not be loaded"):
        await pool.set_alias("chat", {"m@2": 1})
    await pool.wait_retired()
    assert pool.registry.aliases["chat"] == {"m@1": 1.0}
    assert pool.deployments == {"m@1": old} and old.state == "ready"
    assert old.served.shutdowns == 0  # and a half-made instance (warm failed) is shut down:
    made = [s.shutdowns for s in loader.served if s.id == "m@2"]
    assert made == ([1] if failure == "warm" else [])


@async_test
async def test_reload_swaps_in_a_new_instance_and_retires_the_old() -> None:
    pool, loader = make_pool("m@1", drain_timeout_s=30)
    first = await pool.ensure_loaded("m@1")
    lease = await pool.acquire("m")
    second = await pool.reload("m@1")
    assert second.instance != first.instance and pool.deployments["m@1"] is second
    assert (await pool.acquire("m")).deployment is second
    await asyncio.sleep(0.1)
    assert first.state == "draining" and first.served.shutdowns == 0
    lease.release()
    await pool.wait_retired()
    assert first.served.shutdowns == 1 and second.served.shutdowns == 0
    with pytest.raises(ModelNotFound):
        await pool.reload("x@1")


@async_test
async def test_reload_racing_unload_or_reload_shuts_each_instance_down_once() -> None:
    pool, loader = make_pool("m@1")
    first = await pool.ensure_loaded("m@1")
    loader.gates["m@1"] = threading.Event()
    reloads = [asyncio.create_task(pool.reload("m@1")) for _ in range(2)]
    await until(lambda: loader.loads("m@1") == 3)
    assert await pool.unload("m@1", drain=False)
    assert first.served.shutdowns == 1
    loader.gates["m@1"].set()
    await asyncio.gather(*reloads)
    await pool.wait_retired()
    assert (current := pool.deployments["m@1"].served).shutdowns == 0
    assert all(s.shutdowns == 1 for s in loader.served if s is not current)


# --- memory budget

@async_test
async def test_budget_evicts_the_least_recently_used_idle_model() -> None:
    clock = Clock()
    pool, loader = make_pool("a@1", "b@1", "c@1", clock=clock, memory_budget=250)
    await load(pool, clock, (1, "a@1"), (2, "b@1"))
    lease = await pool.acquire("a")
    for clock.t in (3, 3.5):  # a used last (release stamps the clock once): b is the LRU
        lease.release()
    b = pool.deployments["b@1"]
    assert pool.deployments["a@1"].last_used == 3
    clock.t = 4
    await pool.ensure_loaded("c@1")
    assert set(pool.deployments) == {"a@1", "c@1"} and pool.memory_used == 200
    assert b.served.shutdowns == 1 and b.state == "unloaded"
    clock.t = 5
    (await pool.acquire("b")).release()  # on demand again: a (t=3) is now the LRU
    assert set(pool.deployments) == {"b@1", "c@1"}
    await pool.shutdown()
    assert not pool.deployments and all(s.shutdowns == 1 for s in loader.served)


@async_test
async def test_budget_never_evicts_a_leased_model_and_refuses_when_nothing_fits() -> None:
    clock = Clock()
    pool, loader = make_pool("a@1", "b@1", "c@1", "d@1", clock=clock, memory_budget=250)
    await load(pool, clock, (1, "a@1"), (2, "b@1"))
    lease_a = await pool.acquire("a")  # the oldest, but leased
    clock.t = 3
    lease_c = await pool.acquire("c")
    assert set(pool.deployments) == {"a@1", "c@1"}  # b went, a stayed
    with pytest.raises(LoadError, match="not enough memory"):
        await pool.acquire("d")
    assert set(pool.deployments) == {"a@1", "c@1"}
    [d] = [s for s in loader.served if s.id == "d@1"]  # measured too big: shut down again
    assert d.shutdowns == 1
    lease_a.release(), lease_c.release()
    # both idle now, but evicting both cannot make room: refused before loading, nothing evicted
    pool.registry.add(ModelSpec(name="big", version="1", source="builtin:smollm2",
                                memory_bytes=1000))
    with pytest.raises(LoadError, match="not enough memory for big@1"):
        await pool.ensure_loaded("big@1")
    assert loader.loads("big@1") == 0 and set(pool.deployments) == {"a@1", "c@1"}


@async_test
async def test_concurrent_loads_of_different_models_never_share_the_free_memory() -> None:
    """Budget 150, models of 100 and no footprint known in advance: two loads started together
    must not both pass their checks against the same free memory while both warm up."""
    clock = Clock()
    pool, loader = make_pool("a@1", "b@1", clock=clock, memory_budget=150)
    loader.warm_gates = {"a@1": asyncio.Event(), "b@1": asyncio.Event()}
    first = asyncio.create_task(pool.ensure_loaded("a@1"))
    second = asyncio.create_task(pool.ensure_loaded("b@1"))
    await until(lambda: ("warm", "a@1") in loader.log)
    await asyncio.sleep(0.05)
    assert loader.loads("b@1") == 0  # b waits: a holds the budget until it is published
    loader.warm_gates["a@1"].set()
    await first
    await until(lambda: ("warm", "b@1") in loader.log)
    loader.warm_gates["b@1"].set()
    await second
    assert set(pool.deployments) == {"b@1"} and pool.memory_used == 100  # a (idle) evicted
    await pool.shutdown()


@async_test
async def test_without_a_budget_different_models_load_side_by_side() -> None:
    pool, loader = make_pool("a@1", "b@1")
    loader.warm_gates = {"a@1": asyncio.Event(), "b@1": asyncio.Event()}
    tasks = [asyncio.create_task(pool.ensure_loaded(m)) for m in ("a@1", "b@1")]
    await until(lambda: ("warm", "a@1") in loader.log and ("warm", "b@1") in loader.log)
    for gate in loader.warm_gates.values():
        gate.set()
    await asyncio.gather(*tasks)
    assert set(pool.deployments) == {"a@1", "b@1"}
    await pool.shutdown()


# --- idle TTL

@async_test
async def test_expire_idle_unloads_models_idle_longer_than_the_ttl() -> None:
    clock = Clock()
    pool, loader = make_pool("a@1", "b@1", "c@1", clock=clock, idle_ttl_s=60)
    await load(pool, clock, (0, "a@1"), (0, "b@1"))
    a, lease_c = pool.deployments["a@1"], await pool.acquire("c")
    clock.t = 50
    (await pool.acquire("b")).release()
    clock.t = 100
    assert await pool.expire_idle() == ["a@1"]
    assert set(pool.deployments) == {"b@1", "c@1"} and a.served.shutdowns == 1
    clock.t = 500
    assert await pool.expire_idle() == ["b@1"]  # c is leased: kept however old
    lease_c.release()
    clock.t = 561
    assert await pool.expire_idle() == ["c@1"] and not pool.deployments
    pool_off, _ = make_pool("a@1", clock=clock)  # ttl 0: never
    await pool_off.ensure_loaded("a@1")
    clock.t = 10**9
    assert await pool_off.expire_idle() == []


@async_test
async def test_expire_idle_spares_a_model_leased_while_it_was_unloading_others() -> None:
    clock = Clock()
    pool, loader = make_pool("a@1", "b@1", clock=clock, idle_ttl_s=60)
    await load(pool, clock, (0, "a@1"), (0, "b@1"))
    b, clock.t = pool.deployments["b@1"], 100
    loader.shutdown_gates["a@1"] = threading.Event()
    expire = asyncio.create_task(pool.expire_idle())
    await until(lambda: "a@1" not in pool.deployments)
    lease = await pool.acquire("b")  # a request for b while a shuts down
    loader.shutdown_gates["a@1"].set()
    assert await expire == ["a@1"]
    assert pool.deployments["b@1"] is b and b.served.shutdowns == 0
    lease.release()


# --- register, unload

@async_test
async def test_register(tmp_path: Path) -> None:
    (root := tmp_path / "models").mkdir()
    (root / "w.bin").write_text("x")
    pool, loader = make_pool(roots=(root,))
    for source in ("../models/w.bin", str(root / "w.bin"), "missing.bin"):
        with pytest.raises(RegistryError):
            await pool.register(ModelSpec(name="m", version="1", source=source))
        assert not pool.registry.specs
    assert await pool.register(ModelSpec(name="m", version="1", source="w.bin"),
                               load=False) is None
    assert "m@1" in pool.registry.specs and not pool.deployments
    loader.fail.add("n@1")
    with pytest.raises(LoadError):
        await pool.register(ModelSpec(name="n", version="1", source="w.bin"))
    assert "n@1" not in pool.registry.specs  # a failed registration leaves no trace
    dep = await pool.register(ModelSpec(name="o", version="1", source="w.bin"))
    assert dep is pool.deployments["o@1"] and loader.calls[-1][1] == (root / "w.bin").resolve()
    with pytest.raises(RegistryError, match="already registered"):
        await pool.register(ModelSpec(name="o", version="1", source="w.bin"))
    (root / "w.bin").unlink()  # the file went away after registration
    with pytest.raises(LoadError, match="not found"):
        await pool.acquire("m")


@async_test
async def test_unload_with_drain_waits_for_leases_up_to_the_timeout() -> None:
    pool, loader = make_pool("a@1", "b@1", drain_timeout_s=0.4)
    lease = await pool.acquire("a")
    asyncio.get_running_loop().call_later(0.15, lease.release)
    start = time.monotonic()
    assert await pool.unload("a@1")  # returns once the lease ends, before the timeout
    assert 0.1 <= time.monotonic() - start < 0.4 and lease.deployment.served.shutdowns == 1
    stuck = await pool.acquire("b")
    start = time.monotonic()
    assert await pool.unload("b@1")  # the lease outlives the timeout: shut down anyway
    assert 0.35 <= time.monotonic() - start < 2 and stuck.deployment.served.shutdowns == 1
    stuck.release()
    assert not await pool.unload("b@1")
    held = await pool.acquire("a")
    start = time.monotonic()
    assert await pool.unload("a@1", drain=False)
    assert time.monotonic() - start < 0.2 and held.deployment.served.shutdowns == 1

