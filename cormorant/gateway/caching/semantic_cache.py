"""An in-process semantic cache: a response reused for a prompt of close embedding (cosine).

Entries are (unit-normalized embedding, JSON-able value) in namespaces; the caller builds a
namespace from tenant, model instance, endpoint and every request parameter but the prompt,
so a hit can only cross prompts, never tenants or settings. A lookup is one matrix-vector
product over the namespace's live entries. Bounded by an entry count over all namespaces (LRU;
a hit refreshes an entry's position, not its TTL). Values are kept as JSON text, so a caller
mutating what it got back cannot change the cache. Thread-safe (one lock).
Imports numpy and the stdlib.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# Adding a vector this similar to a cached one replaces that entry instead of duplicating it.
_SAME = 1.0 - 1e-6


@dataclass(frozen=True)
class SemanticCacheConfig:
    threshold: float = 0.95  # cosine similarity at or above this is a hit
    max_entries: int = 10_000  # over all namespaces, LRU eviction
    ttl_s: float = 600.0

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got "
                             f"{self.threshold}")
        if self.max_entries < 1 or not self.ttl_s > 0:
            raise ValueError("max_entries must be >= 1 and ttl_s > 0")


@dataclass
class _Entry:
    namespace: str
    vector: np.ndarray  # [dim] float32, unit norm
    value_json: str
    expires_at: float


class _Space:
    """One namespace: its entries and a matrix of their vectors, rebuilt after a change."""

    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}
        self._ids: list[int] = []
        self._matrix: np.ndarray | None = None  # [num_entries, dim]

    def changed(self) -> None:
        self._matrix = None

    def best(self, vector: np.ndarray) -> tuple[int, float] | None:
        """(entry id, similarity) of the closest entry, or None when empty."""
        if not self.entries:
            return None
        if self._matrix is None:
            self._ids = list(self.entries)
            self._matrix = np.stack([self.entries[i].vector for i in self._ids])
        if self._matrix.shape[1] != vector.shape[0]:
            raise ValueError(f"vector has {vector.shape[0]} dimensions, this namespace "
                             f"holds {self._matrix.shape[1]}")
        sims = self._matrix @ vector  # [num_entries]
        row = int(np.argmax(sims))
        return self._ids[row], float(min(1.0, max(-1.0, sims[row])))


def _unit(vector: Sequence[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("a cache vector must be non-empty and finite")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError("a zero vector has no direction: it cannot be cached or looked up")
    return (v / norm).astype(np.float32)


class SemanticCache:
    def __init__(self, config: SemanticCacheConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._spaces: dict[str, _Space] = {}
        self._lru: OrderedDict[int, _Entry] = OrderedDict()  # oldest use first
        self._next_id = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Live (unexpired) entries over all namespaces."""
        with self._lock:
            now = self.clock()
            for entry_id in [i for i, e in self._lru.items() if e.expires_at <= now]:
                self._remove(entry_id)
            return len(self._lru)

    def lookup(self, namespace: str, vector: Sequence[float],
               threshold: float | None = None) -> tuple[dict, float] | None:
        """(value, similarity) of the closest live entry of `namespace` if its cosine
        similarity is at least `threshold` (the config's when None), else None."""
        unit = _unit(vector)
        limit = self.config.threshold if threshold is None else threshold
        with self._lock:
            space = self._live_space(namespace)
            found = space.best(unit) if space is not None else None
            if found is None or found[1] < limit:
                return None
            entry_id, similarity = found
            self._lru.move_to_end(entry_id)
            return json.loads(self._lru[entry_id].value_json), similarity

    def add(self, namespace: str, vector: Sequence[float], value: dict) -> None:
        """Cache `value` for `vector` in `namespace` (replacing an entry with the same
        direction), then evict the least recently used entries past max_entries."""
        unit = _unit(vector)
        value_json = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            space = self._live_space(namespace)
            if space is None:
                space = self._spaces[namespace] = _Space()
            found = space.best(unit)  # also refuses a vector of another dimension
            if found is not None and found[1] >= _SAME:
                self._remove(found[0])
                space = self._spaces.setdefault(namespace, space)
            entry = _Entry(namespace, unit, value_json, self.clock() + self.config.ttl_s)
            entry_id = next(self._next_id)
            space.entries[entry_id] = entry
            space.changed()
            self._lru[entry_id] = entry
            while len(self._lru) > self.config.max_entries:
                self._remove(next(iter(self._lru)))

    def _live_space(self, namespace: str) -> _Space | None:
        """The namespace with its expired entries dropped; None when it has none left."""
        space = self._spaces.get(namespace)
        if space is None:
            return None
        now = self.clock()
        for entry_id in [i for i, e in space.entries.items() if e.expires_at <= now]:
            self._remove(entry_id)
        return self._spaces.get(namespace)

    def _remove(self, entry_id: int) -> None:
        entry = self._lru.pop(entry_id)
        space = self._spaces[entry.namespace]
        del space.entries[entry_id]
        space.changed()
        if not space.entries:
            del self._spaces[entry.namespace]
