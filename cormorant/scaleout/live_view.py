"""The engine replicas each Serve application's request router in this process lists now.

Serve hands every handle's request router each running replica's `routing_stats` (what
EngineReplica.record_routing_stats returns, refreshed every routing_stats_period_s), which
carry the replica's encoded EngineStats. Our routers (scaleout.router) register here under
their application's name; `live_stats(app)` reads the registered router's current replicas
at call time, so any ingress replica sees every running engine replica, whether or not it
has streamed from it, and a replica Serve no longer lists (stopped, dead) is gone at once.
Plain Python, no Ray import: the table holds weak references, so a dropped router leaves.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

from cormorant.engine.messages import EngineStats, decode

_routers: dict[str, weakref.ref] = {}
_lock = threading.Lock()


def register(app_name: str, router: Any) -> None:
    """`router`: a RequestRouter (its `curr_replicas`: ReplicaID -> RunningReplica); the
    latest one registered for an application is the one read."""
    with _lock:
        _routers[app_name] = weakref.ref(router)


def live_stats(app_name: str) -> dict[str, EngineStats] | None:
    """replica id -> its latest EngineStats, for every replica the application's router
    lists now (one whose stats have not arrived yet is left out); None when no router of
    the application runs in this process."""
    with _lock:
        ref = _routers.get(app_name)
    router = ref() if ref is not None else None
    if router is None:
        return None
    view = {}
    for replica_id, replica in list(router.curr_replicas.items()):
        raw = (replica.routing_stats or {}).get("stats")
        stats = decode(raw) if isinstance(raw, bytes) else None
        if isinstance(stats, EngineStats):
            view[getattr(replica_id, "unique_id", str(replica_id))] = stats
    return view
