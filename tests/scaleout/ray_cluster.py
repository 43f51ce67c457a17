"""A real two-node Ray cluster on this machine (ray.cluster_utils.Cluster) running Serve, and
the helpers the scale-out tests share: deploy an application, count and kill its replicas,
read their ongoing requests.

One cluster per test module (start-up costs tens of seconds on two cores); teardown shuts Serve,
the driver and both nodes down, so no Ray process outlives the tests.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.server.config import ServerConfig

REPO = Path(__file__).resolve().parents[2]
# The replicas import this checkout (not an installed copy), one torch thread each.
ENV = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
APP = "cormorant"
ENGINE = "cormorant-engine"


@dataclass
class RayCluster:
    cluster: object
    url: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_cluster(node_cpus: tuple[int, ...] = (2, 2)):
    """Ray nodes on this machine, the first the head (logical CPUs each as given), Serve's
    proxy on a free port; Serve, the driver and the nodes are shut down on exit."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    # No dashboard: another cluster on this machine may hold its port (a 60 s wait, then the
    # head node's start-up times out).
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": node_cpus[0], "include_dashboard": False})
    try:
        for cpus in node_cpus[1:]:
            cluster.add_node(num_cpus=cpus)
        ray.init(address=cluster.address, include_dashboard=False,
                 runtime_env={"env_vars": ENV})
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield RayCluster(cluster, f"http://127.0.0.1:{port}")
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def two_node_cluster():
    """A head node and one worker node, 2 logical CPUs each."""
    return local_cluster((2, 2))


def engine_config(model: str, max_num_seqs: int = 4, max_model_len: int = 512,
                  num_blocks: int = 1024) -> EngineConfig:
    return EngineConfig(model=model, device="cpu", threads=1, seed=0,
                        cache=CacheConfig(num_blocks=num_blocks),
                        scheduler=SchedulerConfig(max_model_len=max_model_len,
                                                  max_num_seqs=max_num_seqs))


def deploy(url: str, model: str, options, server: ServerConfig | None = None,
           timeout: float = 240.0, engine: EngineConfig | None = None) -> None:
    """Run the scale-out application (engine: engine_config(model) unless given) and wait
    until the ingress answers /ready."""
    from ray import serve

    from cormorant.scaleout.app import scaleout_app

    engine = engine or engine_config(model)
    serve.run(scaleout_app(engine, "tiny", server or ServerConfig(), options),
              name=APP, route_prefix="/", blocking=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError("the scale-out application did not become ready")


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or ENGINE not in app.deployments:
        return 0
    return app.deployments[ENGINE].replica_states.get("RUNNING", 0)


def replica_names(replica_id: str = "") -> list[str]:
    """The engine replicas' actor names (`...#<replica id>`; `replica_id`'s only, when given)."""
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{APP}#{ENGINE}#")
            and a["name"].endswith(replica_id)]


def replica_actors(replica_id: str = "") -> list:
    """The engine replicas' actors (the one of `replica_id` only, when given)."""
    import ray

    names = replica_names(replica_id)
    actors = []
    for name in names:
        with contextlib.suppress(ValueError):  # it exited since the listing
            actors.append(ray.get_actor(name, namespace="serve"))
    return actors


def ongoing_requests() -> dict[str, int]:
    """Serve's own count of ongoing requests on each engine replica (what its graceful
    shutdown drains), from each replica actor's get_num_ongoing_requests (a Serve-internal
    method, the one behind its queue-length probes); actor name -> count."""
    import ray

    counts = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if not name.startswith(f"SERVE_REPLICA::{APP}#{ENGINE}#"):
            continue
        try:
            actor = ray.get_actor(name, namespace="serve")
            counts[name] = ray.get(actor.get_num_ongoing_requests.remote(), timeout=10)
        except Exception:  # stopped meanwhile
            continue
    return counts


def metric_values(url: str, name: str) -> dict[str, float]:
    """replica label -> value of one per-replica series of the ingress's /metrics."""
    values = {}
    for line in httpx.get(url + "/metrics", timeout=60).text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            replica = labels.split('replica="', 1)[1].split('"', 1)[0]
            values[replica] = float(value)
    return values
