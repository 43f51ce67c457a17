"""Tensor-parallel world: this process's rank and size, and the two collectives layers use.

Everything runs with a world size of 1 until torch.distributed is initialised by the runner;
the layers only ever talk to the group through this module, so a custom communicator can
replace it later. Imports: torch only.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def tp_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the tensor-parallel group; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum x over the group in place (row-parallel outputs, vocab-parallel embeddings)."""
    if tp_rank_and_size()[1] > 1:
        dist.all_reduce(x)
    return x


def all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's x along the last dim (vocab-parallel logits)."""
    world_size = tp_rank_and_size()[1]
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)
