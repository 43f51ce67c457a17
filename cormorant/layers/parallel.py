"""Tensor-parallel world: this process's rank and size, and the two collectives layers use.

Everything runs with a world size of 1 until torch.distributed is initialised (in a
tensor-parallel worker, runner.tp_worker: `init_tensor_parallel`); the layers only ever talk
to the group through this module, so a custom communicator can replace it later.
`single_rank()` builds an unsharded model inside a sharded process (the full shapes a random
model draws its weights in, models.random_init). Imports: torch only.
"""
from __future__ import annotations

import contextvars
import datetime
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

_SINGLE_RANK = contextvars.ContextVar("single_rank", default=False)


def tp_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the tensor-parallel group; (0, 1) when not distributed."""
    if not _SINGLE_RANK.get() and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextmanager
def single_rank() -> Iterator[None]:
    """Layers built inside see a world of one (the unsharded shapes); refuses nesting."""
    if _SINGLE_RANK.get():
        raise RuntimeError("single_rank() is already active")
    token = _SINGLE_RANK.set(True)
    try:
        yield
    finally:
        _SINGLE_RANK.reset(token)


def init_tensor_parallel(rank: int, world_size: int, store: dist.Store, backend: str,
                         timeout_s: float) -> None:
    """Join the group (gloo on the CPU, nccl on CUDA). `timeout_s` bounds every collective, so
    a rank whose peer hangs or dies raises instead of waiting forever."""
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def kv_head_shard(num_kv_heads: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first kv head, kv heads) held by `rank`: an equal split when the kv heads divide
    across ranks, else (fewer kv heads than ranks, GQA) each rank holds the one kv head its
    query heads read, replicated on world_size / num_kv_heads ranks."""
    if num_kv_heads % world_size == 0:
        local = num_kv_heads // world_size
        return rank * local, local
    if world_size % num_kv_heads:
        raise ValueError(f"{num_kv_heads} kv heads neither divide across nor replicate over "
                         f"{world_size} tensor-parallel ranks")
    return rank // (world_size // num_kv_heads), 1


def _group_size() -> int:
    """The group's size for a collective in a forward pass. Not tp_rank_and_size: a model
    never runs inside single_rank(), and Dynamo (the compiled CPU decode) cannot trace the
    ContextVar it reads."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum x over the group in place (row-parallel outputs, vocab-parallel embeddings)."""
    if _group_size() > 1:
        dist.all_reduce(x)
    return x


def all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's x along the last dim (vocab-parallel logits)."""
    world_size = _group_size()
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def min_over_ranks(value: int, device: torch.device) -> int:
    """The smallest `value` of all ranks (the KV-cache blocks every rank can hold)."""
    if tp_rank_and_size()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64,
                     device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
