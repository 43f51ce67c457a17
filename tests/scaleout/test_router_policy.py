"""The routing and autoscaling policies alone (plain Python, no cluster): prefix affinity
with bounded load, turns among idle replicas, and the replica count from engine load."""
from __future__ import annotations

from cormorant.scaleout.autoscale import desired_replicas
from cormorant.scaleout.prefix import prefix_hashes
from cormorant.scaleout.router import PrefixTable, RoutingGuesses, choose_replica


def test_the_prefix_owner_wins_until_it_carries_more_than_its_bounded_share():
    assert choose_replica({"a": 3, "b": 2}, ["a"]) == ("a", True)
    # 12 in flight over 2 replicas: the owner may carry ceil(1.25 * 13 / 2) - 1 = 8.
    assert choose_replica({"a": 8, "b": 4}, ["a"]) == ("a", True)
    assert choose_replica({"a": 9, "b": 3}, ["a"]) == ("b", False)
    assert choose_replica({"a": 1, "b": 0}, ["gone"]) == ("b", False)
    # A prefix held by several: the least loaded holder, within the bound.
    assert choose_replica({"a": 5, "b": 4, "c": 0}, ["a", "b"]) == ("b", True)


def test_an_owner_within_the_slack_of_the_least_loaded_keeps_its_prefix():
    # Few requests make the bound tight (4 vs 0: ceil(1.25 * 5 / 2) = 4); the engines' load
    # figures lag a stats period, so a small absolute gap must not cost the prefix hit.
    assert choose_replica({"a": 4, "b": 0}, ["a"]) == ("b", False)
    assert choose_replica({"a": 4, "b": 0}, ["a"], load_slack=8) == ("a", True)
    assert choose_replica({"a": 8, "b": 0}, ["a"], load_slack=8) == ("a", True)
    assert choose_replica({"a": 9, "b": 0}, ["a"], load_slack=8) == ("b", False)
    # Past the slack the bound still rules: ceil(1.25 * 61 / 2) = 39, so 40 vs 20 spills.
    assert choose_replica({"a": 40, "b": 20}, ["a"], load_slack=8) == ("b", False)
    assert choose_replica({"a": 30, "b": 20}, ["a"], load_slack=8) == ("a", True)


def test_a_guess_moves_to_the_replica_serve_really_used():
    table = PrefixTable(max_entries=100)
    guesses = RoutingGuesses(table)
    table.record([1], "a")  # an earlier request left block 1 on a
    guesses.guess("r1", [1, 2, 3], "a")
    assert table.longest_owners([1, 2, 3], {"a": 0, "b": 0}) == ["a"]
    guesses.confirm("r1", [1, 2, 3], "b")  # a's probe timed out: Serve sent it to b
    assert table.longest_owners([1, 2, 3], {"a": 0, "b": 0}) == ["b"]
    assert table.longest_owners([1], {"a": 0, "b": 0}) == ["a", "b"]  # a keeps what it had
    guesses.guess("r2", [7, 8], "a")
    guesses.guess("r2", [7, 8], "b")  # asked again after a rejection
    assert table.longest_owners([7, 8], {"a": 0, "b": 0}) == ["b"]
    guesses.confirm("r2", [7, 8], "b")
    assert table.longest_owners([7, 8], {"a": 0, "b": 0}) == ["b"]
    bounded = RoutingGuesses(PrefixTable(100), max_pending=2)
    for i in range(5):
        bounded.guess(f"q{i}", [i], "a")
    assert len(bounded._pending) == 2


def test_idle_replicas_take_turns_and_kv_use_only_breaks_ties():
    last: dict[str, int] = {}
    picks = []
    for turn in range(4):
        chosen, _ = choose_replica({"a": 0.3, "b": 0.0}, [], last_chosen=last)
        last[chosen] = turn
        picks.append(chosen)
    assert picks == ["b", "a", "b", "a"]
    assert choose_replica({"a": 1.9, "b": 1.1})[0] == "b"
    assert choose_replica({"a": 2.0, "b": 1.9})[0] == "b"


def test_prefix_hashes_chain_over_full_blocks_and_the_salt():
    ids = list(range(40))
    hashes = prefix_hashes(ids, 16)
    assert len(hashes) == 2  # the 8 trailing tokens make no full block
    assert prefix_hashes(ids[:32] + [7] * 16, 16)[:2] == hashes
    assert prefix_hashes([99] + ids[1:], 16)[1] != hashes[1]  # a block's hash covers all before
    assert prefix_hashes(ids, 16, cache_salt="team-a")[0] != hashes[0]


def test_the_table_finds_the_longest_prefix_on_live_replicas_and_forgets_the_dead():
    table = PrefixTable(max_entries=3)
    table.record([1, 2], "a")
    table.record([1, 2, 3], "b")
    assert table.longest_owners([1, 2, 3, 4], {"a": 0, "b": 0}) == ["b"]
    assert table.longest_owners([1, 2, 9], {"a": 0, "b": 0}) == ["a", "b"]
    assert table.longest_owners([1, 2, 3], {"a": 0}) == ["a"]  # b is gone: a has 1, 2
    table.forget("b")
    assert table.longest_owners([1, 2, 3], {"a": 0, "b": 0}) == ["a"]
    table.record([5, 6, 7, 8], "a")  # LRU bound: only the last three stay
    assert table.longest_owners([5], {"a": 0}) == []
    assert table.longest_owners([5, 6, 7, 8], {"a": 0}) == ["a"]


def test_replicas_follow_the_engines_requests_or_kv_use_whichever_needs_more():
    assert desired_replicas(0, [0.5], target_requests=8, target_kv_usage=0.8) == 0
    assert desired_replicas(1, [0.0], target_requests=8, target_kv_usage=0.8) == 1
    assert desired_replicas(17, [0.1, 0.1], target_requests=8, target_kv_usage=0.8) == 3
    assert desired_replicas(4, [0.9, 0.9], target_requests=8, target_kv_usage=0.8) == 3


def test_the_ingress_lists_the_routers_replicas_with_the_fresher_figures():
    """scaleout.client.merge_stats: every replica the router lists; a step message under
    FRESH_S old wins over the router's figures; one the router dropped stays only while its
    messages are that fresh; without a router view, what streamed within STALE_S."""
    from cormorant.engine.messages import EngineStats
    from cormorant.scaleout.client import FRESH_S, STALE_S, merge_stats

    def stats(n: int) -> EngineStats:
        return EngineStats(num_running=n)

    live = {"a": stats(1), "b": stats(2)}
    now = 1000.0
    seen = {"a": (stats(5), now - FRESH_S / 2), "b": (stats(6), now - FRESH_S - 0.1),
            "drain": (stats(7), now - FRESH_S / 2), "gone": (stats(8), now - FRESH_S - 0.1)}
    merged = merge_stats(live, seen, now)
    assert {r: s.num_running for r, s in merged.items()} == {"a": 5, "b": 2, "drain": 7}
    assert merge_stats({}, {}, now) == {}
    old = {"x": (stats(1), now - STALE_S + 1), "y": (stats(2), now - STALE_S - 1)}
    assert list(merge_stats(None, old, now)) == ["x"]
