"""BlockManager alone: allocation, reference counts, prefix-cache hits, LRU eviction, invariants.

Plain Python; also checks that the engine's scheduling modules import without torch.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from cormorant.engine.block_manager import BlockManager, chain_hash, prefix_block_hashes

BS = 4


def compute_all(bm: BlockManager, seq) -> None:
    """Admit seq and pretend one step computed all of its tokens."""
    num_cached = bm.num_cached_prefix_tokens(seq)
    assert bm.allocate_prompt(seq, seq.num_tokens - num_cached)
    seq.num_computed_tokens = seq.num_tokens
    bm.mark_computed(seq)
    bm.check_invariants()


def test_allocate_grow_and_free_round_trip(make_seq):
    bm = BlockManager(num_blocks=8, block_size=BS)
    seq = make_seq(list(range(10)))
    assert bm.allocate_prompt(seq, 6)  # a first chunk: 6 tokens -> 2 blocks
    assert len(seq.block_table) == 2 and seq.num_computed_tokens == 0
    seq.num_computed_tokens = 6
    assert bm.ensure_slots(seq, 4)  # the rest of the prompt: 10 slots -> 3 blocks
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    assert bm.usage == pytest.approx(3 / 8)
    bm.check_invariants([seq])
    bm.free(seq)
    assert seq.block_table == [] and bm.num_free_blocks == 8
    bm.free(seq)  # a second free is a no-op, not a double free
    bm.check_invariants([])


def test_ensure_slots_fails_without_side_effects(make_seq):
    bm = BlockManager(num_blocks=3, block_size=BS)
    seq = make_seq(list(range(8)))
    assert bm.allocate_prompt(seq, 8)
    seq.num_computed_tokens = 8
    assert bm.can_append(seq, 4) and not bm.can_append(seq, 5)
    table = list(seq.block_table)
    assert not bm.ensure_slots(seq, 5)
    assert seq.block_table == table and bm.num_free_blocks == 1
    assert not bm.allocate_prompt(make_seq(list(range(100, 109))), 9)  # needs 3, 1 free
    bm.check_invariants([seq])


def test_second_request_hits_a_two_block_shared_prefix(make_seq):
    bm = BlockManager(num_blocks=16, block_size=BS)
    shared = list(range(2 * BS))
    first = make_seq(shared + [90, 91, 92])
    compute_all(bm, first)
    second = make_seq(shared + [50, 51])
    assert bm.num_cached_prefix_tokens(second) == 2 * BS
    assert bm.allocate_prompt(second, 2)
    assert second.num_cached_tokens == second.num_computed_tokens == 2 * BS
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] not in first.block_table
    assert [bm.ref_count(b) for b in second.block_table] == [2, 2, 1]
    bm.check_invariants([first, second])


@pytest.mark.parametrize("num_tokens, expected", [
    (3 * BS, 2 * BS),  # an exact 3-block prompt: the last block is recomputed
    (3 * BS + 1, 3 * BS),  # one extra token: all 3 full blocks are served
    (BS, 0),  # a single full block: nothing can be served
])
def test_identical_prompt_always_recomputes_its_last_token(num_tokens, expected, make_seq):
    bm = BlockManager(num_blocks=16, block_size=BS)
    prompt = list(range(num_tokens))
    compute_all(bm, make_seq(prompt))
    again = make_seq(prompt)
    assert bm.allocate_prompt(again, num_tokens - bm.num_cached_prefix_tokens(again))
    assert again.num_cached_tokens == expected < num_tokens


def test_a_block_is_cached_only_once_its_kv_is_computed(make_seq):
    bm = BlockManager(num_blocks=16, block_size=BS)
    prompt = list(range(3 * BS))
    seq = make_seq(prompt)
    assert bm.allocate_prompt(seq, 2 * BS)  # allocated, but nothing computed yet
    bm.mark_computed(seq)
    assert bm.num_cached_prefix_tokens(make_seq(prompt)) == 0
    seq.num_computed_tokens = BS + 1  # one full block written, the second half written
    bm.mark_computed(seq)
    assert bm.num_cached_prefix_tokens(make_seq(prompt)) == BS
    assert bm.num_cached_blocks == 1


def test_chain_hash_covers_the_whole_prefix(make_seq):
    bm = BlockManager(num_blocks=16, block_size=BS)
    compute_all(bm, make_seq([1] * BS + [2] * BS + [3]))
    # Same second block after a different first block: no hit at all.
    assert bm.num_cached_prefix_tokens(make_seq([9] * BS + [2] * BS + [3])) == 0
    assert chain_hash(0, [1, 2]) != chain_hash(1, [1, 2]) != chain_hash(0, [2, 1])
    assert chain_hash(7, [1, 2]) == chain_hash(7, (1, 2))  # stable, type-agnostic


def salted(make_seq, prompt: list[int], salt: str):
    seq = make_seq(prompt)
    seq.cache_salt = salt
    return seq


def test_salts_are_separate_prefix_namespaces(make_seq):
    """Equal salts share blocks as before; different salts (or salted vs unsalted) never do."""
    bm = BlockManager(num_blocks=32, block_size=BS)
    prompt = list(range(3 * BS + 1))
    compute_all(bm, salted(make_seq, prompt, "tenant-a"))
    assert bm.num_cached_prefix_tokens(salted(make_seq, prompt, "tenant-a")) == 3 * BS
    assert bm.num_cached_prefix_tokens(salted(make_seq, prompt, "tenant-b")) == 0
    assert bm.num_cached_prefix_tokens(make_seq(prompt)) == 0  # the unsalted namespace
    compute_all(bm, make_seq(prompt))
    assert bm.num_cached_prefix_tokens(make_seq(prompt)) == 3 * BS
    assert bm.num_cached_prefix_tokens(salted(make_seq, prompt, "tenant-b")) == 0
    b = salted(make_seq, prompt, "tenant-b")
    assert bm.allocate_prompt(b, b.num_tokens)
    assert b.num_cached_tokens == 0 and bm.num_cached_blocks == 6
    bm.check_invariants()


def test_prefix_block_hashes_are_the_block_managers_own(make_seq):
    """The router-facing function names exactly the blocks the block manager registers."""
    bm = BlockManager(num_blocks=32, block_size=BS)
    prompt = list(range(100, 100 + 3 * BS + 2))
    for salt in ("", "tenant-a"):
        seq = salted(make_seq, prompt, salt)
        compute_all(bm, seq)
        hashes = prefix_block_hashes(prompt, BS, salt)
        assert len(hashes) == 3 and hashes == seq.block_hashes[:3]
        assert [bm._hash_to_block[h] for h in hashes] == seq.block_table[:3]
    assert prefix_block_hashes(prompt, BS) == prefix_block_hashes(prompt, BS, "")
    assert prefix_block_hashes(prompt, BS, "a")[0] != prefix_block_hashes(prompt, BS, "b")[0]
    assert prefix_block_hashes(prompt[:BS - 1], BS, "a") == []
    assert prefix_block_hashes(prompt, BS, "\ud800")  # a lone surrogate still hashes


def test_freed_cached_blocks_stay_and_plain_blocks_go_first(make_seq):
    bm = BlockManager(num_blocks=4, block_size=BS)
    prompt = list(range(2 * BS + 1))  # 2 cacheable blocks + 1 partial
    seq = make_seq(prompt)
    compute_all(bm, seq)
    bm.free(seq)
    assert bm.num_free_blocks == 4 and bm.num_cached_blocks == 2
    # Needs 2 blocks: the plain ones are taken, the cached prefix survives.
    other = make_seq(list(range(100, 100 + 2 * BS)))
    assert bm.allocate_prompt(other, 2 * BS)
    assert bm.num_evictions == 0 and bm.num_cached_prefix_tokens(make_seq(prompt)) == 2 * BS
    bm.check_invariants([other])


def test_eviction_is_lru_and_takes_a_prefix_from_its_tail(make_seq):
    bm = BlockManager(num_blocks=6, block_size=BS)
    spare = make_seq([7])
    assert bm.allocate_prompt(spare, 1)  # holds one block until we want a plain one back
    prompt_a, prompt_b = list(range(2 * BS + 1)), list(range(50, 50 + 2 * BS + 1))
    for prompt in (prompt_a, prompt_b):  # A is freed first, so it is older
        seq = make_seq(prompt)
        compute_all(bm, seq)
        bm.free(seq)
    assert bm.num_cached_blocks == 4  # plain: 1; evictable, LRU first: A1, A0, B1, B0

    def cached(prompt):
        return bm.num_cached_prefix_tokens(make_seq(prompt))

    hog = make_seq(list(range(200, 200 + 5 * BS)))
    assert bm.allocate_prompt(hog, 2 * BS)  # the plain block, then evicts A's tail block
    assert bm.num_evictions == 1 and cached(prompt_a) == BS and cached(prompt_b) == 2 * BS
    bm.free(spare)
    # A hit refreshes A's first block, so B's tail becomes the least recently used.
    touch = make_seq(prompt_a)
    assert bm.allocate_prompt(touch, 1) and touch.num_cached_tokens == BS
    bm.free(touch)
    assert bm.num_evictions == 1
    hog.num_computed_tokens = 2 * BS
    assert bm.ensure_slots(hog, 2 * BS)  # the plain block, then evicts B's tail
    assert bm.num_evictions == 2 and cached(prompt_a) == BS and cached(prompt_b) == BS
    bm.check_invariants([hog])


def test_concurrent_identical_blocks_register_once(make_seq):
    bm = BlockManager(num_blocks=8, block_size=BS)
    prompt = list(range(2 * BS + 1))
    a, b = make_seq(prompt), make_seq(prompt)
    assert bm.allocate_prompt(a, a.num_tokens) and bm.allocate_prompt(b, b.num_tokens)
    for seq in (a, b):  # both computed the same prefix in one step: no hit was possible
        seq.num_computed_tokens = seq.num_tokens
        bm.mark_computed(seq)
    assert bm.num_cached_blocks == 2
    bm.check_invariants([a, b])
    bm.free(a)
    bm.free(b)  # b's duplicate blocks go back plain, the cache keeps a's
    bm.check_invariants([])
    assert bm.num_free_blocks == 8 and bm.num_cached_prefix_tokens(make_seq(prompt)) == 2 * BS


def test_disabled_prefix_caching_never_hits(make_seq):
    bm = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    prompt = list(range(3 * BS))
    compute_all(bm, make_seq(prompt))
    assert bm.num_cached_blocks == 0 and bm.num_cached_prefix_tokens(make_seq(prompt)) == 0


def test_reset_prefix_cache_drops_only_unreferenced_blocks(make_seq):
    bm = BlockManager(num_blocks=8, block_size=BS)
    held, dropped = make_seq(list(range(BS + 1))), make_seq(list(range(50, 50 + BS + 1)))
    compute_all(bm, held)
    compute_all(bm, dropped)
    bm.free(dropped)
    assert bm.reset_prefix_cache() == 1
    assert bm.num_cached_blocks == 1 and bm.num_free_blocks == 6
    bm.check_invariants([held])


def test_check_invariants_catches_leaks_and_bad_refcounts(make_seq):
    bm = BlockManager(num_blocks=4, block_size=BS)
    seq = make_seq(list(range(5)))
    assert bm.allocate_prompt(seq, 5)
    with pytest.raises(AssertionError):
        bm.check_invariants([])  # seq's blocks are held but not accounted for: a leak
    bm._ref_counts[seq.block_table[0]] += 1
    with pytest.raises(AssertionError):
        bm.check_invariants([seq])
    bm._ref_counts[seq.block_table[0]] -= 1
    bm.check_invariants([seq])


def test_rejects_an_empty_cache():
    with pytest.raises(ValueError):
        BlockManager(num_blocks=0, block_size=BS)


def test_scheduling_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import cormorant.engine.block_manager, cormorant.engine.scheduler\n"
            "assert sys.modules['torch'] is None\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
