"""The Ray Serve application of a model registry: one ingress, one engine application per version.

`cormorant serve --ray --models FILE` and `serve run cormorant.scaleout.app:build_app
models=FILE` build it. The ingress (`cormorant-ingress`) reads the registry file and
serves server.app.build_app over it, so aliases, canary splits, fallbacks, on-demand loads
and the admin API (`cormorant models ...`) work as in one process; its model pool's loader is
scaleout.model_apps.ModelApps, which runs every version as a Serve application of its own
(`<app>.<name@version>.<digest>`), encoders (`kind = "embed"`) included. The
`load = "startup"` versions are deployed together while the ingress starts, so the
application is ready once they all run. Scale to zero (`min_replicas = 0`) serves one --model
only: `registry_error` says so before anything is deployed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ray import serve

from cormorant.hosting.registry import Registry, load_registry_file, resolve_source
from cormorant.scaleout.app import INGRESS_DEPLOYMENT, ingress_deployment_options
from cormorant.scaleout.metrics import install_replica_metrics, pool_clients
from cormorant.scaleout.model_apps import ModelApps
from cormorant.scaleout.options import ScaleoutOptions
from cormorant.scaleout.served_by import install_served_by
from cormorant.server.app import build_app as build_server_app
from cormorant.server.config import ServerConfig


def registry_error(registry: Registry, options: ScaleoutOptions) -> str | None:
    """Why this registry cannot be served through Ray (None: it can)."""
    if options.min_replicas == 0:
        return "scale to zero (--min-replicas 0) serves one --model, not a registry"
    if zero := [s.id for s in registry.specs.values() if s.ray.get("min_replicas") == 0]:
        return (f"scale to zero (min_replicas = 0 in ray, {', '.join(zero)}) serves one "
                "--model, not a registry")
    return None


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class RegistryIngress:
    """The cormorant HTTP surface over a registry whose versions run as Serve applications."""

    def __init__(self, models_file: str, server_config: dict[str, Any],
                 options: dict[str, Any], policy: str) -> None:
        self.registry = load_registry_file(models_file)
        app = serve.get_replica_context().app_name
        self.apps = ModelApps(app, ScaleoutOptions(**options), policy)
        roots = self.registry.settings.roots
        startup = [(spec, resolve_source(spec.source, roots))
                   for spec in self.registry.specs.values() if spec.load == "startup"]
        # The first ingress replica deploys them, the others reuse what it deployed.
        self.loaded = self.apps.load_many(startup, deploy=_rank() == 0) if startup else {}
        self.server_config = ServerConfig(**server_config)

    def __serve_build_asgi_app__(self):
        app = build_server_app(config=self.server_config, registry=self.registry,
                               loaded=self.loaded, loader=self.apps.load)
        install_replica_metrics(app, pool_clients(app))
        install_served_by(app)
        return app


def _rank() -> int:
    rank = serve.get_replica_context().rank
    return int(getattr(rank, "rank", rank) or 0)


def registry_app(models_file: str | Path, server_config: ServerConfig,
                 options: ScaleoutOptions, policy: str = "fair"):
    """The bound Serve application: `serve.run(registry_app(...), name=APP)`. The file is
    read (and checked) here, and again by each ingress replica: give every node the same
    path, as for the models themselves."""
    path = str(Path(models_file).expanduser().resolve())
    if error := registry_error(load_registry_file(path), options):
        raise ValueError(error)
    fields = {f.name: getattr(server_config, f.name) for f in dataclasses.fields(ServerConfig)}
    ingress = RegistryIngress.options(**ingress_deployment_options(options))
    return ingress.bind(path, fields, dataclasses.asdict(options), policy)
