"""Per-replica engine gauges under the ingress's one /metrics, with a `replica` label.

The ingress sees each replica's EngineStats on every step message (scaleout.client); this
collector exports the latest of each live replica at scrape time, beside the summed
per-model series the server already exports, plus the clients' failover retries. With a
model registry there is one client per loaded version (scaleout.model_apps), each series
labelled with its model name and version.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cormorant.scaleout.client import RayEngineClient
from cormorant.scaleout.replica import kv_usage

LABELS = ["model_name", "model_version", "replica"]


class ReplicaStatsCollector:
    def __init__(self, clients: Callable[[], list[RayEngineClient]]) -> None:
        self.clients = clients

    def collect(self):
        running = GaugeMetricFamily("cormorant_replica_num_requests_running",
                                    "Requests running on each engine replica.", labels=LABELS)
        waiting = GaugeMetricFamily("cormorant_replica_num_requests_waiting",
                                    "Requests waiting on each engine replica.", labels=LABELS)
        kv = GaugeMetricFamily("cormorant_replica_kv_cache_usage_perc",
                               "KV-cache use of each engine replica (1 = full).", labels=LABELS)
        hits = CounterMetricFamily("cormorant_replica_prefix_cache_hits",
                                   "Prompt tokens each replica served from its prefix cache.",
                                   labels=LABELS)
        queries = CounterMetricFamily("cormorant_replica_prefix_cache_queries",
                                      "Prompt tokens each replica looked up in its prefix "
                                      "cache (every prompt it admitted).", labels=LABELS)
        retries = CounterMetricFamily("cormorant_replica_retries",
                                      "Requests sent again after their replica failed before "
                                      "the first token.", labels=LABELS[:2])
        for client in self.clients():
            name, version = client.model_name, client.model_version
            for replica, stats in sorted(client.replica_stats().items()):
                labels = [name, version, replica]
                running.add_metric(labels, stats.num_running)
                waiting.add_metric(labels, stats.num_waiting)
                kv.add_metric(labels, kv_usage(stats))
                hits.add_metric(labels, stats.prefix_cache_hits)
                queries.add_metric(labels, stats.prefix_cache_queries)
            retries.add_metric([name, version], client.num_retries)
        return [running, waiting, kv, hits, queries, retries]


def install_replica_metrics(app, clients: Callable[[], list[RayEngineClient]]) -> None:
    """Register the collector on the app's own metrics registry (gateway.telemetry);
    `clients`: the ingress's engine clients at scrape time."""
    app.state.cormorant.telemetry.metrics.registry.register(ReplicaStatsCollector(clients))


def pool_clients(app) -> Callable[[], list[RayEngineClient]]:
    """The clients of the versions the app's model pool serves or drains now."""
    pool = app.state.cormorant.pool

    def clients() -> list[RayEngineClient]:
        held = [*pool.deployments.values(), *pool.draining]
        return [d.served.raw for d in held if isinstance(getattr(d.served, "raw", None),
                                                         RayEngineClient)]
    return clients
