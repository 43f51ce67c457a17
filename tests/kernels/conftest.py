"""Shared set-up for the kernel tests: interpreter mode on CPU-only machines, the device, and a
builder of random paged-attention batches (shuffled, non-contiguous block tables).

On a machine without CUDA, TRITON_INTERPRET=1 is set here (before any kernel module is
imported) so `python -m pytest tests/kernels` works as is; shapes stay small because the
interpreter runs every program in numpy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _kernels_runnable() -> None:
    """Skip (with the reason) where the Triton kernels cannot run at all."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed (pip install triton)")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def make_batch():
    """The make_paged_batch builder (a fixture, so tests need no sys.path tricks)."""
    return make_paged_batch


@pytest.fixture
def rel_err():
    return relative_error


@dataclass
class PagedBatch:
    q: torch.Tensor  # [num_tokens, num_heads, head_dim]
    k: torch.Tensor  # [num_tokens, num_kv_heads, head_dim]: this step's keys
    v: torch.Tensor
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, num_kv_heads, head_dim], history filled
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32, padded with 0
    slot_mapping: torch.Tensor  # [num_tokens] int64, -1 on padding tokens
    query_lens: list[int]
    seq_len_list: list[int]


def make_paged_batch(query_lens: list[int], seq_lens: list[int], num_heads: int,
                     num_kv_heads: int, head_dim: int, block_size: int = 16,
                     num_pad_tokens: int = 0, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu", seed: int = 0) -> PagedBatch:
    """Random batch: every sequence's blocks are a shuffled, interleaved draw from the pool,
    the whole cache (history and spare blocks) is random, and num_pad_tokens trailing query
    rows belong to no sequence (slot -1), as in a padded CUDA-graph batch."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 7  # spare blocks stay random: reading them is a bug
    perm = torch.randperm(num_blocks, generator=gen)
    block_tables = torch.zeros(len(seq_lens), max(blocks_per_seq + [1]), dtype=torch.int32)
    taken = 0
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = perm[taken:taken + n]
        taken += n
    num_tokens = sum(query_lens) + num_pad_tokens
    slots = []
    for i, (q_len, s_len) in enumerate(zip(query_lens, seq_lens)):
        for pos in range(s_len - q_len, s_len):
            slots.append(int(block_tables[i, pos // block_size]) * block_size + pos % block_size)
    slots += [-1] * num_pad_tokens

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    return PagedBatch(
        q=randn(num_tokens, num_heads, head_dim).to(device),
        k=randn(num_tokens, num_kv_heads, head_dim).to(device),
        v=randn(num_tokens, num_kv_heads, head_dim).to(device),
        kv_cache=randn(2, num_blocks, block_size, num_kv_heads, head_dim).to(device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_lens=list(query_lens), seq_len_list=list(seq_lens))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; NaN anywhere gives NaN (so comparisons fail)."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())
