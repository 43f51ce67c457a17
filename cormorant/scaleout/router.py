"""PrefixAwareRouter: a Ray Serve request router that knows where prompt prefixes are cached.

Each request carries `prefix_hashes` (scaleout.prefix: a chained hash per leading full KV
block). The router remembers which replicas it sent each hash to (an LRU table) and sends a
request to the least loaded replica holding its longest known prefix, unless all of those are
over their bounded-load share: ceil((1 + load_epsilon) * (total load + 1) / replicas), as in
consistent hashing with bounded loads, so one hot system prompt cannot pile onto one replica,
and more than `load_slack` requests above the least loaded replica (a small absolute gap never
costs a prefix hit; the engines' reported load lags by up to one stats period). The replica it
spills to then holds that prefix too.
The table learns a choice at once (a burst sharing one prefix stays together), and Serve's
`on_request_routed` corrects it when the request went elsewhere: Serve moves to the next rank
when the chosen replica's queue-length probe times out or it rejects the request.
Otherwise (no known prefix, or the owner is full) it picks the least loaded replica, the one
picked longest ago among equals (idle replicas take turns). Load is the larger of what this
handle has in flight there (Serve's queue-length cache) and what the engine reported
(running + waiting, `record_routing_stats`), plus its KV use (a fraction) as a tie-breaker.
`choose_replica` is the policy alone, plain Python, so it is tested without Ray.
Both routers here publish the replicas Serve lists to them, with their stats, in
scaleout.live_view (what each ingress's /metrics shows).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from cormorant.scaleout import live_view


def choose_replica(loads: Mapping[Any, float], owners: Sequence[Any] = (),
                   load_epsilon: float = 0.25,
                   last_chosen: Mapping[Any, int] | None = None,
                   load_slack: int = 0) -> tuple[Any, bool]:
    """(the replica to use, whether it holds the prefix). loads: replica -> load; owners: the
    replicas holding the longest known prefix; last_chosen: replica -> when it was last picked
    (among equal loads, the longest unpicked goes first); load_slack: an owner within this many
    requests of the least loaded replica keeps the request whatever the bound says."""
    total = sum(int(v) for v in loads.values())
    bound = max(math.ceil((1.0 + load_epsilon) * (total + 1) / len(loads)),
                min(int(v) for v in loads.values()) + load_slack + 1)
    last = last_chosen or {}

    def key(r: Any) -> tuple:
        # The whole part of a load counts requests; the fraction (KV use) only breaks ties.
        return int(loads[r]), last.get(r, -1), loads[r], str(r)

    holders = [r for r in owners if r in loads and int(loads[r]) < bound]
    if holders:
        return min(holders, key=key), True
    return min(loads, key=key), False


class PrefixTable:
    """prefix hash -> the replicas that computed it (a hot prefix spilled over by the load
    bound ends up on several), least recently used hash first out."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._owners: OrderedDict[int, dict[Any, None]] = OrderedDict()

    def longest_owners(self, hashes: Sequence[int], alive: Mapping[Any, Any]) -> list[Any]:
        for h in reversed(hashes):
            owners = [r for r in self._owners.get(h, ()) if r in alive]
            if owners:
                self._owners.move_to_end(h)
                return owners
        return []

    def record(self, hashes: Sequence[int], replica: Any) -> list[int]:
        """Note that `replica` computed these hashes; returns those it did not hold before."""
        added = []
        for h in hashes:
            owners = self._owners.setdefault(h, {})
            if replica not in owners:
                owners[replica] = None
                added.append(h)
            self._owners.move_to_end(h)
        while len(self._owners) > self.max_entries:
            self._owners.popitem(last=False)
        return added

    def discard(self, hashes: Sequence[int], replica: Any) -> None:
        for h in hashes:
            owners = self._owners.get(h)
            if owners is not None:
                owners.pop(replica, None)
                if not owners:
                    del self._owners[h]

    def forget(self, replica: Any) -> None:
        for h in list(self._owners):
            owners = self._owners[h]
            owners.pop(replica, None)
            if not owners:
                del self._owners[h]


class RoutingGuesses:
    """The table's entries made at choice time, per request, until Serve says where the request
    really went: `guess` records the choice (undoing an earlier guess for the same request, as
    when Serve asks again after a rejection), `confirm` keeps it or moves it to the replica that
    took the request. Requests that are never confirmed (cancelled while queued) age out."""

    def __init__(self, table: PrefixTable, max_pending: int = 100_000) -> None:
        self.table = table
        self.max_pending = max_pending
        self._pending: OrderedDict[str, tuple[Any, list[int]]] = OrderedDict()

    def guess(self, request_id: str, hashes: Sequence[int], replica: Any) -> None:
        self._undo(request_id, replica)
        self._pending[request_id] = (replica, self.table.record(hashes, replica))
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)

    def confirm(self, request_id: str, hashes: Sequence[int], replica: Any) -> None:
        self._undo(request_id, replica)
        self.table.record(hashes, replica)

    def _undo(self, request_id: str, replica: Any) -> None:
        earlier = self._pending.pop(request_id, None)
        if earlier is not None and earlier[0] != replica:
            self.table.discard(earlier[1], earlier[0])


class LiveViewRouter(RequestRouter):
    """A RequestRouter whose live view of the replicas (`curr_replicas`, with each one's
    routing_stats) is readable from this process by application (scaleout.live_view)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        live_view.register(self.app_name, self)


class PrefixAwareRouter(LiveViewRouter):
    def initialize_state(self, load_epsilon: float = 0.25, load_slack: int = 8,
                         max_entries: int = 200_000) -> None:
        self.load_epsilon = load_epsilon
        self.load_slack = load_slack
        self.table = PrefixTable(max_entries)
        self.guesses = RoutingGuesses(self.table)
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
        owners = self.table.longest_owners(hashes, by_id) if hashes else []
        chosen, is_owner = choose_replica(loads, owners, self.load_epsilon, self._last_chosen,
                                          self.load_slack)
        self.num_chosen += 1
        self._last_chosen[chosen] = self.num_chosen
        self.num_prefix_hits += is_owner
        if hashes and pending_request is not None:
            self.guesses.guess(pending_request.metadata.internal_request_id, hashes, chosen)
        rest = sorted((rid for rid in by_id if rid != chosen), key=lambda rid: loads[rid])
        return [[by_id[chosen]], [by_id[rid] for rid in rest]] if rest else [[by_id[chosen]]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: Any) -> None:
        hashes = _hashes(pending_request)
        if hashes:
            self.guesses.confirm(pending_request.metadata.internal_request_id, hashes, replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.forget(replica_id)
        self._last_chosen.pop(replica_id, None)


def _hashes(pending_request: PendingRequest | None) -> list[int]:
    if pending_request is None:
        return []
    hashes = pending_request.kwargs.get("prefix_hashes")
    return list(hashes) if isinstance(hashes, list) else []


class RoundRobinRouter(LiveViewRouter):
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
