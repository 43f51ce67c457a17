"""Prefix hashes: one chained hash per leading full KV block of a prompt, for the router.

The same shape as the engine's prefix cache (engine.block_manager): a block's hash covers
every token before it, and a cache salt (the key's namespace) starts the chain, so two
prompts share the first k hashes exactly when they share their first k full blocks and salt.
blake2b, never Python's hash(): every ingress process must compute the same numbers.
"""
from __future__ import annotations

import hashlib
import struct

MAX_BLOCKS = 256  # the router needs the leading blocks only; bounds the work per request


def prefix_hashes(token_ids: list[int], block_size: int, cache_salt: str = "",
                  max_blocks: int = MAX_BLOCKS) -> list[int]:
    num_blocks = min(len(token_ids) // block_size, max_blocks)
    digest = hashlib.blake2b(cache_salt.encode(), digest_size=8).digest()
    hashes = []
    for b in range(num_blocks):
        block = token_ids[b * block_size:(b + 1) * block_size]
        digest = hashlib.blake2b(digest + struct.pack(f"<{block_size}q", *block),
                                 digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "little", signed=True))
    return hashes
