"""BlockManager: the paged KV cache's bookkeeping (block ids, reference counts, prefix cache).

Plain Python, no torch: it hands out block ids; the runner owns the tensors they index.
Imports: the standard library and `cormorant.engine.sequence` only.

Model (vLLM v1 / nano-vllm):
- The cache is `num_blocks` blocks of `block_size` token slots. A sequence's `block_table`
  maps its token position p to slot `block_table[p // block_size] * block_size + p % block_size`.
- A block is either free (reference count 0) or held by the sequences whose block tables
  contain it (reference count == number of holders).
- Automatic prefix caching: once a FULL block's KV has been written, its chained hash
  hash(parent_hash, tokens_of_block) is registered. A later sequence whose tokens produce the
  same chain takes a reference to those blocks instead of recomputing them.
- Tenant isolation: the chain starts from `salt_root_hash(seq.cache_salt)`, so sequences share
  cached blocks only when their salts are equal ("" is today's unsalted chain).
  `prefix_block_hashes` is the one function anything outside the engine (a prefix-aware
  router) must use to name a prompt's blocks, so both agree on every salted hash.
- Free blocks live in two pools: plain blocks (no hash) and evictable cached blocks (hash kept,
  LRU order). Allocation takes plain blocks first and only then evicts the least recently
  used cached block, so cached prefixes survive as long as possible.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable

from cormorant.engine.sequence import Sequence

_HASH_BYTES = 16  # 128-bit chain hashes: collisions are not a practical concern
_ROOT_HASH = 0  # parent of an unsalted sequence's first block
_SALT_DOMAIN = b"cormorant-prefix-cache-salt\0"  # salted roots never equal a block's hash input


def chain_hash(parent_hash: int, token_ids: Iterable[int]) -> int:
    """Stable (cross-process) hash of one full block given its parent block's hash.

    blake2b rather than Python's hash(): stable across processes, so replicas and a future
    cache-aware router can agree on block identities.
    """
    digest = hashlib.blake2b(digest_size=_HASH_BYTES)
    digest.update(parent_hash.to_bytes(_HASH_BYTES, "little"))
    digest.update(array("q", token_ids).tobytes())
    return int.from_bytes(digest.digest(), "little")


def salt_root_hash(salt: str) -> int:
    """The parent hash of a chain's first block: 0 for "" (unsalted), else a hash of the salt,
    so every block of a salted chain differs from every block of any other salt's chain."""
    if not salt:
        return _ROOT_HASH
    digest = hashlib.blake2b(_SALT_DOMAIN, digest_size=_HASH_BYTES)
    digest.update(salt.encode("utf-8", "surrogatepass"))
    return int.from_bytes(digest.digest(), "little")


def prefix_block_hashes(token_ids: Iterable[int], block_size: int, salt: str = "") -> list[int]:
    """The prefix-cache hashes of the full blocks of `token_ids` under `salt`, first block first.

    The block manager names a sequence's blocks with exactly these values (the engine's
    block_size, the request's cache_salt), so a prefix-aware router that calls this with the
    same arguments can tell which replica holds how many of a prompt's leading blocks.
    A trailing partial block has no hash.
    """
    ids = list(token_ids)
    hashes: list[int] = []
    parent = salt_root_hash(salt)
    for start in range(0, len(ids) - block_size + 1, block_size):
        parent = chain_hash(parent, ids[start:start + block_size])
        hashes.append(parent)
    return hashes


class BlockManager:
    """Block ids, reference counts, a free pool and the prefix cache of one engine's KV cache."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, "
                             f"got {num_blocks} and {block_size}")
        self.num_total_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._block_hashes: list[int | None] = [None] * num_blocks  # set iff registered
        self._hash_to_block: dict[int, int] = {}
        self._free_plain: deque[int] = deque(range(num_blocks))
        # Unreferenced blocks that still carry a registered hash; first entry = LRU victim.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        # Prefix-cache counters for metrics (tokens, over successful admissions).
        self.num_prefix_queried_tokens = 0
        self.num_prefix_hit_tokens = 0
        self.num_evictions = 0

    # ---- pool size -----------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: plain free blocks plus evictable cached ones."""
        return len(self._free_plain) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_total_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache (in use or evictable)."""
        return len(self._hash_to_block)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by some sequence (0.0 .. 1.0)."""
        return self.num_used_blocks / self.num_total_blocks

    def blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def ref_count(self, block_id: int) -> int:
        return self._ref_counts[block_id]

    # ---- prefix cache lookup -------------------------------------------------------------

    def _seq_block_hash(self, seq: Sequence, index: int) -> int:
        """Chained hash of seq's full block `index` under seq's salt (as prefix_block_hashes),
        memoised on the sequence (tokens of a full block never change, so the hash stays valid
        across preemptions)."""
        hashes = seq.block_hashes
        size = self.block_size
        while len(hashes) <= index:
            i = len(hashes)
            parent = hashes[-1] if hashes else salt_root_hash(seq.cache_salt)
            hashes.append(chain_hash(parent, seq.token_ids[i * size:(i + 1) * size]))
        return hashes[index]

    def _lookup_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached chain of seq's full blocks.

        Never the whole sequence: the last token is always recomputed so the step that
        finishes the prompt has logits to sample from.
        """
        if not self.enable_prefix_caching or seq.sampling_params.prompt_logprobs is not None:
            return []  # prompt logprobs need every prompt position computed
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for i in range(max_blocks):
            block_id = self._hash_to_block.get(self._seq_block_hash(seq, i))
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def num_cached_prefix_tokens(self, seq: Sequence) -> int:
        """Tokens of seq the prefix cache would serve if it were admitted now (no side effects)."""
        return len(self._lookup_prefix(seq)) * self.block_size

    # ---- allocation ----------------------------------------------------------------------

    def allocate_prompt(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Admit seq: reuse its cached prefix and allocate slots for its first chunk.

        Takes references to the cached prefix blocks, allocates fresh blocks for
        `num_new_tokens` more tokens after that prefix, and sets seq.num_computed_tokens and
        seq.num_cached_tokens to the prefix length. Returns False, changing nothing, if the
        blocks do not fit. Call `num_cached_prefix_tokens` first to size the chunk.
        """
        assert not seq.block_table, "allocate_prompt on a sequence that already holds blocks"
        hits = self._lookup_prefix(seq)
        num_cached = len(hits) * self.block_size
        assert num_cached + num_new_tokens <= seq.num_tokens
        # Cached blocks nobody references sit in the evictable pool: taking them uses it up.
        num_hits_from_pool = sum(1 for b in hits if self._ref_counts[b] == 0)
        num_fresh = self.blocks_for_tokens(num_cached + num_new_tokens) - len(hits)
        if num_hits_from_pool + num_fresh > self.num_free_blocks:
            return False
        # Take the hits first so the fresh allocations below cannot evict them.
        for block_id in hits:
            if self._ref_counts[block_id] == 0:
                del self._evictable[block_id]
            self._ref_counts[block_id] += 1
        seq.block_table = hits + [self._take_free_block() for _ in range(num_fresh)]
        seq.num_computed_tokens = num_cached
        seq.num_cached_tokens = min(num_cached, seq.num_prompt_tokens)
        seq.num_hashed_blocks = len(hits)
        self.num_prefix_queried_tokens += seq.num_tokens
        self.num_prefix_hit_tokens += num_cached
        return True

    def _num_missing_blocks(self, seq: Sequence, num_new_tokens: int) -> int:
        needed = self.blocks_for_tokens(seq.num_computed_tokens + num_new_tokens)
        return max(0, needed - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether ensure_slots(seq, num_new_tokens) would succeed."""
        return self._num_missing_blocks(seq, num_new_tokens) <= self.num_free_blocks

    def ensure_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow seq.block_table to cover num_computed_tokens + num_new_tokens slots.

        Returns False with no side effects if the pool cannot supply the blocks.
        """
        missing = self._num_missing_blocks(seq, num_new_tokens)
        if missing > self.num_free_blocks:
            return False
        seq.block_table.extend(self._take_free_block() for _ in range(missing))
        return True

    def _take_free_block(self) -> int:
        if self._free_plain:
            block_id = self._free_plain.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)
            del self._hash_to_block[self._block_hashes[block_id]]
            self._block_hashes[block_id] = None
            self.num_evictions += 1
        assert self._ref_counts[block_id] == 0
        self._ref_counts[block_id] = 1
        return block_id

    # ---- registration and release --------------------------------------------------------

    def mark_computed(self, seq: Sequence) -> None:
        """Register the hashes of seq's blocks that became full and computed since last call.

        Call after seq.num_computed_tokens advanced. If an identical block is already
        registered (two sequences computed the same prefix concurrently) the existing entry
        wins and this block stays unregistered; it returns to the plain pool when freed.
        """
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for i in range(seq.num_hashed_blocks, num_full):
            block_hash = self._seq_block_hash(seq, i)
            block_id = seq.block_table[i]
            if self._block_hashes[block_id] is None and block_hash not in self._hash_to_block:
                self._block_hashes[block_id] = block_hash
                self._hash_to_block[block_hash] = block_id
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, num_full)

    def free(self, seq: Sequence) -> None:
        """Drop seq's references and clear its block table (a no-op if it holds none).

        Blocks go back tail first, so a sequence's first blocks become the most recently
        used and its prefix is the last part of it to be evicted.
        """
        for block_id in reversed(seq.block_table):
            assert self._ref_counts[block_id] > 0, f"double free of block {block_id}"
            self._ref_counts[block_id] -= 1
            if self._ref_counts[block_id] == 0:
                if self._block_hashes[block_id] is None:
                    self._free_plain.append(block_id)
                else:
                    self._evictable[block_id] = None
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def reset_prefix_cache(self) -> int:
        """Forget every unreferenced cached block (benchmarks, weight reloads); returns how many.

        Blocks in use keep their entries: they still hold valid KV.
        """
        num_dropped = len(self._evictable)
        while self._evictable:
            block_id, _ = self._evictable.popitem(last=False)
            del self._hash_to_block[self._block_hashes[block_id]]
            self._block_hashes[block_id] = None
            self._free_plain.append(block_id)
        return num_dropped

    # ---- invariants (tests) --------------------------------------------------------------

    def check_invariants(self, seqs: Iterable[Sequence] | None = None) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent.

        With `seqs` (every sequence that may hold blocks), also checks that each block's
        reference count equals the number of block tables that contain it.
        """
        plain, evictable = set(self._free_plain), set(self._evictable)
        assert len(plain) == len(self._free_plain), "block twice in the plain free list"
        assert not plain & evictable, "block both plain-free and evictable"
        for block_id, refs in enumerate(self._ref_counts):
            block_hash = self._block_hashes[block_id]
            assert refs >= 0, f"block {block_id} has refcount {refs}"
            if refs == 0:
                assert (block_id in plain) != (block_id in evictable), \
                    f"unreferenced block {block_id} is not in exactly one free pool"
                assert (block_id in evictable) == (block_hash is not None), \
                    f"free block {block_id}: evictable iff it carries a hash"
            else:
                assert block_id not in plain and block_id not in evictable, \
                    f"referenced block {block_id} is in a free pool"
            if block_hash is not None:
                assert self._hash_to_block.get(block_hash) == block_id, \
                    f"block {block_id}'s hash is not registered to it"
        for block_hash, block_id in self._hash_to_block.items():
            assert self._block_hashes[block_id] == block_hash, "hash table points at a stranger"
        if seqs is not None:
            self._check_holders(seqs)

    def _check_holders(self, seqs: Iterable[Sequence]) -> None:
        holders = [0] * self.num_total_blocks
        for seq in seqs:
            assert len(set(seq.block_table)) == len(seq.block_table), \
                f"seq {seq.seq_id} holds a block twice"
            assert len(seq.block_table) * self.block_size >= seq.num_computed_tokens, \
                f"seq {seq.seq_id} has computed tokens without slots"
            for block_id in seq.block_table:
                holders[block_id] += 1
        assert holders == self._ref_counts, "reference counts differ from block-table holders"
