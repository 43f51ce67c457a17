"""The semantic cache: cosine hits and misses per namespace, per-call thresholds, TTL on an
injected clock, the LRU bound over all namespaces, and refused vectors."""
from __future__ import annotations

import numpy as np
import pytest

from cormorant.gateway.caching.semantic_cache import SemanticCache, SemanticCacheConfig

NS = "acme|smol@1|/v1/completions|{max_tokens:16}"


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_identical_vector_hits_with_similarity_one_whatever_its_scale():
    cache = SemanticCache(SemanticCacheConfig())
    cache.add(NS, [3.0, 4.0, 0.0], {"text": "answer"})
    value, similarity = cache.lookup(NS, [0.3, 0.4, 0.0])
    assert value == {"text": "answer"} and similarity == pytest.approx(1.0, abs=1e-6)


def test_near_vector_hits_orthogonal_misses_and_the_best_match_wins():
    cache = SemanticCache(SemanticCacheConfig(threshold=0.95))
    cache.add(NS, [1.0, 0.0, 0.0], {"text": "x"})
    cache.add(NS, [0.0, 1.0, 0.0], {"text": "y"})
    near = [1.0, 0.1, 0.0]  # cos = 1 / sqrt(1.01) ~ 0.995 to x
    value, similarity = cache.lookup(NS, near)
    assert value == {"text": "x"} and similarity == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    assert cache.lookup(NS, [0.0, 0.0, 1.0]) is None
    assert cache.lookup(NS, [1.0, 1.0, 0.0]) is None  # cos ~0.707 to both


def test_per_call_threshold_overrides_the_config():
    cache = SemanticCache(SemanticCacheConfig(threshold=0.95))
    cache.add(NS, [1.0, 0.0], {"text": "x"})
    assert cache.lookup(NS, [1.0, 1.0]) is None
    assert cache.lookup(NS, [1.0, 1.0], threshold=0.7)[0] == {"text": "x"}
    assert cache.lookup(NS, [1.0, 0.01], threshold=1.0) is None


def test_other_namespace_misses():
    cache = SemanticCache(SemanticCacheConfig())
    cache.add(NS, [1.0, 2.0], {"text": "x"})
    assert cache.lookup("other-tenant|smol@1|/v1/completions|{max_tokens:16}", [1.0, 2.0]) is None
    assert cache.lookup(NS, [1.0, 2.0]) is not None


def test_entries_expire_after_ttl():
    clock = Clock()
    cache = SemanticCache(SemanticCacheConfig(ttl_s=10.0), clock=clock)
    cache.add(NS, [1.0, 0.0], {"text": "x"})
    clock.now += 9.5
    assert cache.lookup(NS, [1.0, 0.0]) is not None  # a hit does not extend the TTL
    clock.now += 0.6
    assert cache.lookup(NS, [1.0, 0.0]) is None
    assert len(cache) == 0


def test_lru_bound_over_all_namespaces_and_a_hit_refreshes():
    cache = SemanticCache(SemanticCacheConfig(max_entries=3))
    cache.add("a", [1.0, 0.0], {"n": 1})
    cache.add("b", [1.0, 0.0], {"n": 2})
    cache.add("a", [0.0, 1.0], {"n": 3})
    assert cache.lookup("a", [1.0, 0.0]) == ({"n": 1}, pytest.approx(1.0))  # b is now oldest
    cache.add("c", [1.0, 1.0], {"n": 4})
    assert len(cache) == 3
    assert cache.lookup("b", [1.0, 0.0]) is None
    assert [cache.lookup(ns, v)[0]["n"] for ns, v in
            (("a", [1.0, 0.0]), ("a", [0.0, 1.0]), ("c", [1.0, 1.0]))] == [1, 3, 4]


def test_same_direction_replaces_instead_of_duplicating():
    cache = SemanticCache(SemanticCacheConfig())
    cache.add(NS, [1.0, 2.0], {"v": 1})
    cache.add(NS, [2.0, 4.0], {"v": 2})
    assert len(cache) == 1 and cache.lookup(NS, [1.0, 2.0])[0] == {"v": 2}


def test_returned_value_is_a_copy():
    cache = SemanticCache(SemanticCacheConfig())
    cache.add(NS, [1.0], {"choices": [{"text": "x"}]})
    cache.lookup(NS, [1.0])[0]["choices"][0]["text"] = "mutated"
    assert cache.lookup(NS, [1.0])[0] == {"choices": [{"text": "x"}]}


def test_bad_vectors_are_refused():
    cache = SemanticCache(SemanticCacheConfig())
    with pytest.raises(ValueError):
        cache.add(NS, [0.0, 0.0], {"x": 1})
    with pytest.raises(ValueError):
        cache.lookup(NS, [0.0, 0.0])
    with pytest.raises(ValueError):
        cache.add(NS, [float("nan"), 1.0], {"x": 1})
    cache.add(NS, [1.0, 0.0], {"x": 1})
    with pytest.raises(ValueError):
        cache.add(NS, [1.0, 0.0, 0.0], {"x": 2})  # another dimension in one namespace
    with pytest.raises(TypeError):
        cache.add(NS, [0.0, 1.0], {"x": object()})  # not JSON-able
    assert len(cache) == 1


def test_many_entries_pick_the_true_nearest():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 64))
    cache = SemanticCache(SemanticCacheConfig(threshold=0.9))
    for i, v in enumerate(vectors):
        cache.add(NS, list(v), {"i": i})
    for i in (0, 123, 499):
        query = vectors[i] + 0.05 * rng.standard_normal(64)
        value, similarity = cache.lookup(NS, list(query))
        assert value == {"i": i} and similarity > 0.99
