"""PrefixAwareRouter: a Ray Serve request router that knows where prompt prefixes are cached.

Each request carries `prefix_hashes` (scaleout.prefix: a chained hash per leading full KV
block). The router remembers which replica it last sent each hash to (an LRU table) and
sends a request to the replica that holds its longest known prefix, unless that replica is
over its bounded-load share: ceil((1 + load_epsilon) * (total load + 1) / replicas), as in
consistent hashing with bounded loads, so one hot system prompt cannot pile onto one replica.
Otherwise (no known prefix, or the owner is full) it picks the least loaded replica, the one
picked longest ago among equals (idle replicas take turns). Load is the larger of what this
handle has in flight there (Serve's queue-length cache) and what the engine reported
(running + waiting, `record_routing_stats`), plus its KV use (a fraction) as a tie-breaker.
`choose_replica` is the policy alone, plain Python, so it is tested without Ray.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica


def choose_replica(loads: Mapping[Any, float], owner: Any | None,
                   load_epsilon: float = 0.25,
                   last_chosen: Mapping[Any, int] | None = None) -> tuple[Any, bool]:
    """(the replica to use, whether it is the prefix owner). loads: replica -> load;
    last_chosen: replica -> when it was last picked (ties go to the longest unpicked)."""
    total = sum(int(v) for v in loads.values())
    bound = math.ceil((1.0 + load_epsilon) * (total + 1) / len(loads))
    if owner in loads and int(loads[owner]) < bound:
        return owner, True
    last = last_chosen or {}
    # The whole part of a load counts requests; the fraction (KV use) only breaks ties.
    return min(loads, key=lambda r: (int(loads[r]), last.get(r, -1), loads[r], str(r))), False


class PrefixTable:
    """prefix hash -> the replica that computed it, least recently used first out."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._owner: OrderedDict[int, Any] = OrderedDict()

    def longest_owner(self, hashes: Sequence[int], alive: Mapping[Any, Any]) -> Any | None:
        for h in reversed(hashes):
            owner = self._owner.get(h)
            if owner is not None and owner in alive:
                self._owner.move_to_end(h)
                return owner
        return None

    def record(self, hashes: Sequence[int], replica: Any) -> None:
        for h in hashes:
            self._owner[h] = replica
            self._owner.move_to_end(h)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)

    def forget(self, replica: Any) -> None:
        for h in [h for h, r in self._owner.items() if r == replica]:
            del self._owner[h]


class PrefixAwareRouter(RequestRouter):
    def initialize_state(self, load_epsilon: float = 0.25, max_entries: int = 200_000) -> None:
        self.load_epsilon = load_epsilon
        self.table = PrefixTable(max_entries)
        self._last_chosen: dict[ReplicaID, int] = {}
        self.num_chosen = 0
        self.num_prefix_hits = 0

    def load(self, replica: RunningReplica) -> float:
        """Requests in flight there (Serve's count for this handle, bumped on each send), or
        the engine's running + waiting when that is more (other ingresses' requests)."""
        stats = replica.routing_stats or {}
        engine = stats.get("num_running", 0.0) + stats.get("num_waiting", 0.0)
        own = self.replica_queue_len_cache.get(replica.replica_id) or 0
        return max(own, engine) + float(stats.get("kv_usage", 0.0))

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_id = {r.replica_id: r for r in candidate_replicas}
        loads = {rid: self.load(r) for rid, r in by_id.items()}
        hashes = _hashes(pending_request)
        owner = self.table.longest_owner(hashes, by_id) if hashes else None
        chosen, is_owner = choose_replica(loads, owner, self.load_epsilon, self._last_chosen)
        self.num_chosen += 1
        self._last_chosen[chosen] = self.num_chosen
        self.num_prefix_hits += is_owner
        # Recorded now: Serve sends to the first rank unless its queue is full.
        self.table.record(hashes, chosen)
        rest = sorted((rid for rid in by_id if rid != chosen), key=lambda rid: loads[rid])
        return [[by_id[chosen]], [by_id[rid] for rid in rest]] if rest else [[by_id[chosen]]]

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.forget(replica_id)
        self._last_chosen.pop(replica_id, None)


def _hashes(pending_request: PendingRequest | None) -> list[int]:
    if pending_request is None:
        return []
    hashes = pending_request.kwargs.get("prefix_hashes")
    return list(hashes) if isinstance(hashes, list) else []


class RoundRobinRouter(RequestRouter):
    """Each request to the next replica in turn, blind to prefixes and load: the baseline the
    scale-out benchmark compares PrefixAwareRouter with (`ScaleoutOptions.request_router`)."""

    def initialize_state(self, **_: Any) -> None:
        self.num_routed = 0

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        ordered = sorted(candidate_replicas, key=lambda r: str(r.replica_id))
        self.num_routed += 1
        chosen = ordered[self.num_routed % len(ordered)]
        return [[chosen], [r for r in ordered if r is not chosen]]
