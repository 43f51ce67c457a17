"""ScaleoutOptions: how many engine replicas, where, and how they are routed, scaled, drained.

Plain data (no Ray import), shared by `cormorant serve --ray` (scaleout.launch) and the
Serve application (scaleout.app).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleoutOptions:
    """How many replicas, where, and how they are routed, scaled and drained."""
    num_replicas: int = 2  # a fixed count, unless min_replicas/max_replicas are set
    min_replicas: int | None = None  # either set: autoscaling on the engines' load
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0  # running + waiting per replica the autoscaler aims at
    target_kv_usage: float = 0.8  # ... and the KV-cache use
    upscale_delay_s: float = 10.0
    downscale_delay_s: float = 60.0
    downscale_to_zero_delay_s: float | None = None  # idle time before 1 -> 0 (None: as above)
    cold_start_s: int = 30  # min_replicas 0: the Retry-After while no replica runs
    metrics_interval_s: float = 1.0
    num_gpus_per_replica: float = 0.0  # 1 on a GPU machine: one replica per GPU
    num_cpus_per_replica: float = 1.0
    max_ongoing_requests: int = 256  # per replica, beyond which Serve queues at the handle
    graceful_shutdown_timeout_s: float = 120.0  # a stopping replica's streams may run this long
    health_check_period_s: float = 5.0
    routing_stats_period_s: float = 1.0
    # The Serve request router: scaleout.router's PrefixAwareRouter, or RoundRobinRouter.
    request_router: str = "cormorant.scaleout.router:PrefixAwareRouter"
    load_epsilon: float = 0.25  # bounded load: the prefix owner's allowed excess over average
    load_slack: int = 8  # ... though an owner within this many requests of the least loaded keeps it
    max_attempts: int = 3  # tries per request whose replica dies before its first token
    max_replicas_per_node: int | None = None  # 1: spread the replicas over the nodes
    num_ingress_replicas: int = 1
    num_cpus_per_ingress: float = 1.0
    max_ongoing_requests_per_ingress: int = 4096  # open HTTP requests (streams) per ingress

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None


def model_name_of(model: str) -> str:
    """The name clients use for a model path: its last component, without `.gguf`."""
    name = model.rstrip("/").rsplit("/", 1)[-1]
    return name[:-5] if name.endswith(".gguf") else name


# A registry entry's `ray = {...}` keys (hosting.registry.RAY_OPTIONS) -> ScaleoutOptions fields.
MODEL_SETTINGS = {"replicas": "num_replicas", "min_replicas": "min_replicas",
                  "max_replicas": "max_replicas", "gpus_per_replica": "num_gpus_per_replica",
                  "cpus_per_replica": "num_cpus_per_replica",
                  "target_ongoing_requests": "target_ongoing_requests"}


def for_model(options: ScaleoutOptions, settings: dict[str, float]) -> ScaleoutOptions:
    """The server-wide options with one model version's own `ray` settings over them."""
    fields = {MODEL_SETTINGS[k]: (int(v) if MODEL_SETTINGS[k].endswith("replicas") else
                                  float(v)) for k, v in settings.items()}
    return dataclasses.replace(options, **fields)
