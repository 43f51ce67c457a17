"""ModelPool: the loaded models of one server, inside a memory budget.

Every request takes a `Lease` on the deployment its `model` routes to (`acquire`) and gives it
back when its response is over; a deployment is shut down only when no lease is left (or its
drain timeout passed). The pool never builds an engine: a `Loader` (from the composition root)
turns a ModelSpec and its source into a `Served` object (footprint, warm-up, shutdown).

A swap (`set_alias`, `reload`) loads and warms the new version first, then changes the route in
one step on the event loop; a failed load changes nothing. Before a load, the least recently
used idle models are unloaded until the expected footprint fits the budget; after it, the
measured footprint is checked again; with a budget, loads run one at a time. Idle models unload
after the registry's TTL (`expire_idle`). Imports the stdlib and hosting.registry only.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cormorant.hosting.registry import ModelSpec, Registry, RegistryError, resolve_source

logger = logging.getLogger("cormorant.gateway")


class Served(Protocol):
    memory_bytes: int  # weights + KV cache, measured once loaded

    async def warm(self) -> None: ...  # raises if the model cannot answer

    def shutdown(self) -> None: ...


Loader = Callable[[ModelSpec, Path | str, str], Served]  # (spec, source, instance) -> Served


class ModelNotFound(LookupError):
    pass


class LoadError(RuntimeError):
    """A model could not be loaded (bad file, not enough memory); nothing else changed."""


@dataclass(eq=False)
class Deployment:
    spec: ModelSpec
    served: Any  # Served
    instance: str  # unique per load: caches keyed on it never outlive the weights
    state: str = "ready"  # ready | draining | unloaded
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loaded_at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return self.spec.id


class Lease:
    """One request's hold on a deployment; `release` is idempotent."""

    def __init__(self, deployment: Deployment, clock: Callable[[], float]) -> None:
        self.deployment = deployment
        self._clock = clock
        self._held = True
        deployment.in_flight += 1
        deployment.last_used = clock()

    def release(self) -> None:
        if self._held:
            self._held = False
            self.deployment.in_flight -= 1
            self.deployment.last_used = self._clock()

    async def __aenter__(self) -> Deployment:
        return self.deployment

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class ModelPool:
    def __init__(self, registry: Registry, loader: Loader, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self._loader = loader
        self._clock = clock
        self.deployments: dict[str, Deployment] = {}  # model id -> the serving deployment
        self._loading: dict[str, asyncio.Future] = {}
        self._retiring: set[asyncio.Task] = set()
        self._footprints: dict[str, int] = {}  # model id -> bytes measured at its last load
        self.draining: set[Deployment] = set()  # replaced or unloaded, not yet shut down
        self.on_unloaded: list[Callable[[Deployment], None]] = []
        # Held from a budgeted load's first memory check until its deployment is published,
        # so two loads never both fit against the same free memory.
        self._budget_lock = asyncio.Lock()

    # --- requests ----------------------------------------------------------------------------

    async def acquire(self, name: str, user: str | None = None) -> Lease:
        model_id = self.registry.route(name, user)
        if model_id is None:
            raise ModelNotFound(name)
        return await self.acquire_id(model_id)

    async def acquire_id(self, model_id: str) -> Lease:
        deployment = self.deployments.get(model_id)
        # registered but not loaded: load on demand; and a deployment retired (evicted,
        # unloaded) between its load and this waiter resuming is never leased
        while deployment is None or deployment.state != "ready":
            deployment = await self.ensure_loaded(model_id)
        return Lease(deployment, self._clock)

    @property
    def memory_used(self) -> int:
        """Bytes held by serving models and by replaced ones still draining."""
        return sum(d.served.memory_bytes for d in [*self.deployments.values(), *self.draining])

    # --- loading -----------------------------------------------------------------------------

    async def ensure_loaded(self, model_id: str) -> Deployment:
        """The serving deployment of `model_id`, loading it once however many ask at once."""
        if (deployment := self.deployments.get(model_id)) is not None:
            return deployment
        if (pending := self._loading.get(model_id)) is None:
            pending = asyncio.ensure_future(self._load_and_publish(model_id))
            self._loading[model_id] = pending
            pending.add_done_callback(lambda _: self._loading.pop(model_id, None))
        return await asyncio.shield(pending)

    async def _load_and_publish(self, model_id: str) -> Deployment:
        deployment = await self._load(model_id)
        self.deployments[model_id] = deployment
        return deployment

    async def _load(self, model_id: str) -> Deployment:
        """Load and warm a new instance of `model_id` without publishing it. With a memory
        budget, one at a time: the caller publishes the result before any other load's check
        runs (no await lies between this return and the publication)."""
        if self.registry.settings.memory_budget is None:
            return await self._load_unlocked(model_id)
        async with self._budget_lock:
            return await self._load_unlocked(model_id)

    async def _load_unlocked(self, model_id: str) -> Deployment:
        spec = self.registry.specs.get(model_id)
        if spec is None:
            raise ModelNotFound(model_id)
        try:
            source = resolve_source(spec.source, self.registry.settings.roots)
        except RegistryError as exc:
            raise LoadError(f"{model_id}: {exc}") from None
        await self._make_room(spec.memory_bytes or self._footprints.get(model_id, 0),
                              keep=model_id)
        instance = uuid.uuid4().hex[:16]
        logger.info("loading %s from %s", model_id, source)
        try:
            served = await asyncio.to_thread(self._loader, spec, source, instance)
        except Exception as exc:
            logger.warning("loading %s failed: %s", model_id, exc)
            raise LoadError(f"{model_id} could not be loaded: {_reason(exc)}") from exc
        try:
            await self._make_room(served.memory_bytes, keep=model_id)
            await served.warm()
        except Exception as exc:
            await asyncio.to_thread(served.shutdown)
            raise LoadError(f"{model_id} could not be loaded: {_reason(exc)}") from exc
        self._footprints[model_id] = served.memory_bytes
        logger.info("loaded %s (%.1f MiB)", model_id, served.memory_bytes / 2**20)
        return Deployment(spec, served, instance, last_used=self._clock())

    async def _make_room(self, need: int, keep: str) -> None:
        """Unload idle models, least recently used first, until `need` more bytes fit."""
        budget = self.registry.settings.memory_budget
        if budget is None:
            return
        in_use = self.memory_used
        while in_use + need > budget:
            idle = [d for d in self.deployments.values()
                    if d.in_flight == 0 and d.id != keep and d.state == "ready"]
            if not idle or in_use - sum(d.served.memory_bytes for d in idle) + need > budget:
                raise LoadError(f"not enough memory for {keep}: needs {need / 2**20:.0f} MiB, "
                                f"{in_use / 2**20:.0f} MiB of the {budget / 2**20:.0f} MiB "
                                "budget are held by models in use")
            victim = min(idle, key=lambda d: d.last_used)
            logger.info("unloading %s (least recently used) to make room for %s",
                        victim.id, keep)
            self.deployments.pop(victim.id, None)
            await self._retire(victim, timeout_s=0.0)
            in_use = self.memory_used

    # --- changes at run time -----------------------------------------------------------------

    async def register(self, spec: ModelSpec, load: bool = True) -> Deployment | None:
        resolve_source(spec.source, self.registry.settings.roots)  # RegistryError: refused
        self.registry.add(spec)
        if not load:
            return None
        try:
            return await self.ensure_loaded(spec.id)
        except Exception:
            self.registry.specs.pop(spec.id, None)  # a failed registration leaves no trace
            raise

    async def set_alias(self, alias: str, targets: dict[str, float],
                        unload_replaced: bool = True) -> None:
        """Load and warm every target first; then route `alias` to them in one step; then
        drain and unload the versions nothing routes to any more."""
        for model_id in targets:
            if model_id not in self.registry.specs:
                raise RegistryError(f"alias {alias}: unknown model {model_id!r}")
        for model_id, weight in targets.items():
            if weight > 0:
                await self.ensure_loaded(model_id)
        before = set(self.registry.aliases.get(alias, {}))
        self.registry.set_alias(alias, targets)  # the switch: atomic on the event loop
        if unload_replaced:
            for model_id in before - set(targets):
                if not self.registry.is_referenced(model_id):
                    self._retire_soon(model_id)

    async def reload(self, model_id: str) -> Deployment:
        """A fresh instance of the same version (files changed on disk), swapped in."""
        new = await self._load(model_id)
        old = self.deployments.get(model_id)  # read after the load: it may have changed
        self.deployments[model_id] = new
        if old is not None:
            self._spawn(self._retire(old, self.registry.settings.drain_timeout_s))
        return new

    async def unload(self, model_id: str, drain: bool = True) -> bool:
        deployment = self.deployments.pop(model_id, None)
        if deployment is None:
            return False
        await self._retire(deployment, self.registry.settings.drain_timeout_s if drain else 0)
        return True

    async def expire_idle(self) -> list[str]:
        ttl = self.registry.settings.idle_ttl_s
        if ttl <= 0:
            return []
        now = self._clock()
        stale = [d.id for d in self.deployments.values()
                 if d.in_flight == 0 and now - d.last_used > ttl]
        for model_id in list(stale):
            d = self.deployments.get(model_id)
            if d is None or d.in_flight > 0 or self._clock() - d.last_used <= ttl:
                stale.remove(model_id)  # used (or gone) while earlier ones were unloading
                continue
            logger.info("unloading %s: idle for more than %.0fs", model_id, ttl)
            await self.unload(model_id, drain=False)
        return stale

    async def shutdown(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.to_thread(self.shutdown_now)

    def shutdown_now(self) -> None:
        """Shut every model down at once, draining ones included (the process is ending)."""
        for deployment in [*self.deployments.values(), *self.draining]:
            if deployment.state != "unloaded":
                deployment.state = "unloaded"
                deployment.served.shutdown()
        self.deployments.clear()
        self.draining.clear()

    # --- retiring ----------------------------------------------------------------------------

    def _retire_soon(self, model_id: str) -> None:
        deployment = self.deployments.pop(model_id, None)
        if deployment is not None:
            self._spawn(self._retire(deployment, self.registry.settings.drain_timeout_s))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, deployment: Deployment, timeout_s: float) -> None:
        """Wait for the deployment's leases to end (at most timeout_s), then shut it down."""
        deployment.state = "draining"
        self.draining.add(deployment)
        deadline = self._clock() + timeout_s
        while deployment.in_flight > 0 and self._clock() < deadline:
            await asyncio.sleep(0.05)
        if deployment.in_flight > 0:
            logger.warning("%s: %d requests still running after the drain timeout; "
                           "shutting down anyway", deployment.id, deployment.in_flight)
        if deployment.state == "unloaded":  # shut down meanwhile (shutdown_now)
            return
        deployment.state = "unloaded"
        try:
            await asyncio.to_thread(deployment.served.shutdown)
        finally:
            self.draining.discard(deployment)
        for hook in self.on_unloaded:
            hook(deployment)
        logger.info("unloaded %s", deployment.id)

    async def wait_retired(self) -> None:
        """For tests and shutdown: every drain started so far has finished."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
