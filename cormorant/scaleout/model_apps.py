"""Model versions on Ray Serve: each its own Serve application of engine replicas.

With a model registry the ingress keeps the single-process server's hosting layer (the model
pool with its aliases, canary splits, on-demand loads, unloads and reloads); only its loader
differs: `ModelApps.load` deploys the version as the Serve application
`<app>.<name@version>.<digest>` (one `cormorant-engine` deployment: its own replicas, its own
prefix-aware router, its own autoscaling; or, for an encoder, one `cormorant-encoder`
deployment) and returns a RayEngineClient (RayEncoderClient) over its handle, so a request
for a version can only reach that version's replicas. The application is reused when
it already runs (another ingress replica, or an earlier life of this one, deployed the same
version with the same settings); shutting the client down (an unload, a replaced version's
drain, a reload) deletes it. Only plain data crosses into Serve: the EngineConfig as
engine.messages msgpack bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ray import serve
from ray.serve.schema import ApplicationStatus

from cormorant.config import EngineConfig
from cormorant.engine.messages import encode
from cormorant.hosting.loader import generator_config, model_version, source_path
from cormorant.hosting.registry import ModelSpec
from cormorant.scaleout.app import ENGINE_DEPLOYMENT, engine_deployment_options
from cormorant.scaleout.client import RayEngineClient
from cormorant.scaleout.encoder import (ENCODER_DEPLOYMENT, EncoderReplica, RayEncoderClient,
                                        encoder_deployment_options)
from cormorant.scaleout.options import ScaleoutOptions, for_model
from cormorant.scaleout.replica import EngineReplica

log = logging.getLogger(__name__)
POLL_S = 0.5
Client = RayEngineClient | RayEncoderClient


@dataclass(frozen=True)
class Plan:
    """One version to deploy or reuse: its settings and its application's name."""
    spec: ModelSpec
    path: Path
    config: EngineConfig | None  # None: an encoder (spec.kind "embed")
    options: ScaleoutOptions
    digest: str  # the weights digest (hosting.loader.model_version)
    app: str

    def bind(self):
        """The application: one engine deployment, or one encoder deployment."""
        if self.config is None:
            return serve.deployment(EncoderReplica).options(
                **encoder_deployment_options(self.options)).bind(
                str(self.path), self.spec.name, self.spec.dtype, replica_device(self.spec.device))
        return serve.deployment(EngineReplica).options(
            **engine_deployment_options(self.options)).bind(encode(self.config), self.spec.name)


def replica_device(device: str) -> str:
    """Ray gives each replica its own GPUs, which it sees from cuda:0, so a registry's
    `device = "cuda:K"` runs as `cuda`."""
    return "cuda" if device.startswith("cuda:") else device


def replica_config(spec: ModelSpec, path: Path, policy: str) -> EngineConfig:
    """The version's EngineConfig as a replica runs it (replica_device)."""
    config = generator_config(spec, path, policy)
    return dataclasses.replace(config, device=replica_device(config.device))


def app_name(prefix: str, spec: ModelSpec, config: EngineConfig | None, digest: str,
             options: ScaleoutOptions) -> str:
    """Same version, weights and settings: same name (reused); anything else: a new one."""
    settings = json.dumps([digest, spec.dtype, spec.device, dataclasses.asdict(options)],
                          sort_keys=True, default=str)
    engine = encode(config) if config is not None else b""
    key = hashlib.sha256(engine + settings.encode()).hexdigest()[:8]
    return f"{prefix}{spec.id}.{key}"


class ModelApps:
    """The loader of the ingress's model pool (server.state.RawLoader). Blocking; threads."""

    def __init__(self, app: str, options: ScaleoutOptions, policy: str = "fair",
                 timeout_s: float = 900.0) -> None:
        self.prefix = f"{app}."
        self.options = options
        self.policy = policy
        self.timeout_s = timeout_s
        self.held: set[str] = set()  # applications this ingress serves through a client
        self._lock = threading.Lock()

    def load(self, spec: ModelSpec, source: Path | str) -> tuple[Client, str]:
        return self.load_many([(spec, source)])[spec.id]

    def load_many(self, entries: Iterable[tuple[ModelSpec, Path | str]], deploy: bool = True
                  ) -> dict[str, tuple[Client, str]]:
        """Deploy (or reuse) every entry's application at once, then wait for all of them:
        model id -> (client, weights digest). A failure deletes what this call deployed.
        deploy=False only waits for another ingress replica to deploy them (a redeploy of
        a running application would restart its replicas)."""
        plans = [self._plan(spec, source) for spec, source in entries]
        present = starting_or_running() if deploy else set()
        missing = [p for p in plans if deploy and p.app not in present]
        try:
            if missing:
                wait_deleted([p.app for p in missing], self.timeout_s)  # unloaded just now
                log.info("deploying %s", ", ".join(p.app for p in missing))
                serve.run_many([serve.RunTarget(target=p.bind(), name=p.app, route_prefix=None)
                                for p in missing], wait_for_applications_running=False)
            wait_running([p.app for p in plans], self.timeout_s)
            return {p.spec.id: (self._client(p), p.digest) for p in plans}
        except BaseException:
            with self._lock:
                self.held.difference_update(p.app for p in plans)
            for plan in missing:
                self._delete(plan.app)
            raise

    def _plan(self, spec: ModelSpec, source: Path | str) -> Plan:
        path = source_path(source)
        config, options = None, for_model(self.options, spec.ray)
        if spec.kind == "generate":
            config = replica_config(spec, path, self.policy)
            gpus = options.num_gpus_per_replica * config.tensor_parallel_size
            options = dataclasses.replace(options, num_gpus_per_replica=gpus)
        digest = model_version(path)
        name = app_name(self.prefix, spec, config, digest, options)
        with self._lock:
            if name in self.held:  # a reload while the old instance serves: a fresh one
                name = f"{name}.{uuid.uuid4().hex[:6]}"
            self.held.add(name)
        return Plan(spec, path, config, options, digest, name)

    def _client(self, plan: Plan) -> Client:
        def delete() -> None:
            self._delete(plan.app)

        if plan.config is None:
            handle = serve.get_deployment_handle(ENCODER_DEPLOYMENT, plan.app)
            return RayEncoderClient(handle, str(plan.path), plan.spec.name, delete)
        handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, plan.app)
        return RayEngineClient(handle, plan.config, plan.spec.name, self.options.max_attempts,
                               model_version=plan.spec.version, on_shutdown=delete)

    def _delete(self, name: str) -> None:
        with self._lock:
            self.held.discard(name)
        log.info("deleting the application %s", name)
        serve.delete(name, _blocking=False)


def starting_or_running() -> set[str]:
    """The applications that run or are being deployed (one is reused, not redeployed: a
    redeploy would restart its replicas), from one status call."""
    return {name for name, status in serve.status().applications.items()
            if status.status in (ApplicationStatus.RUNNING, ApplicationStatus.DEPLOYING)}


def wait_deleted(names: list[str], timeout_s: float) -> None:
    """Until none of the named applications is still being deleted."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = serve.status().applications
        if not any(apps[n].status == ApplicationStatus.DELETING for n in names if n in apps):
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"{names} were still being deleted after {timeout_s:.0f}s")


def wait_running(names: list[str], timeout_s: float) -> None:
    """Until every named application runs; its deployment error if one fails."""
    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        pending = []
        for name in names:
            status = apps.get(name)
            if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
                raise RuntimeError(f"{name} failed to deploy: {status.message[-500:]}")
            if status is None or status.status != ApplicationStatus.RUNNING:
                pending.append(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pending} did not start within {timeout_s:.0f}s")
        time.sleep(POLL_S)


def delete_model_apps(app: str, wait_s: float = 120.0) -> list[str]:
    """Delete every model version application of the Serve application `app`, all at once,
    and wait until they are gone (for when `app` itself ends: its ingress replicas never
    delete what another ingress may serve)."""
    names = [n for n in serve.status().applications if n.startswith(f"{app}.")]
    for name in names:
        serve.delete(name, _blocking=False)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and set(names) & set(serve.status().applications):
        time.sleep(POLL_S)
    return names
