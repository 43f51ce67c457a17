"""Size and allocate the paged KV cache from the memory left after the weights are loaded.

Imports torch and config only.
"""
from __future__ import annotations

import logging

import torch

from cormorant.config import CacheConfig, ModelConfig, SchedulerConfig

log = logging.getLogger(__name__)


def bytes_per_block(model: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * element


def available_memory(device: torch.device) -> int:
    """Bytes the KV cache may draw from before the memory fraction is applied."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return _host_available_bytes()


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # no /proc (macOS): assume a modest 4 GiB


def num_kv_blocks(model: ModelConfig, cache: CacheConfig, sched: SchedulerConfig,
                  dtype: torch.dtype, device: torch.device) -> int:
    """How many blocks fit in memory_fraction of what is available now.

    On a GPU the fraction is of the device's total memory minus what the weights and the
    activation profile already hold (as vLLM's gpu_memory_utilization). On the CPU it is a
    fraction of available RAM, capped at what max_num_seqs full-length sequences can use
    twice over (more only feeds the prefix cache and costs page faults)."""
    if cache.num_blocks is not None:
        return cache.num_blocks
    per_block = bytes_per_block(model, cache.block_size, dtype)
    if device.type == "cuda":
        fraction = 0.9 if cache.memory_fraction is None else cache.memory_fraction
        _free, total = torch.cuda.mem_get_info(device)
        used = torch.cuda.max_memory_reserved(device)
        budget = int(total * fraction) - used
    else:
        fraction = 0.1 if cache.memory_fraction is None else cache.memory_fraction
        budget = int(available_memory(device) * fraction)
    num_blocks = budget // per_block
    if device.type != "cuda":
        blocks_per_seq = -(-sched.max_model_len // cache.block_size)
        num_blocks = min(num_blocks, 2 * sched.max_num_seqs * blocks_per_seq)
    if num_blocks < 1:
        raise MemoryError(
            f"no memory left for the KV cache: {budget / 2**20:.0f} MiB available for blocks of "
            f"{per_block / 2**20:.2f} MiB; raise the memory fraction or use a smaller model")
    log.info("KV cache: %d blocks of %d tokens (%.1f MiB)", num_blocks, cache.block_size,
             num_blocks * per_block / 2**20)
    return num_blocks


def allocate_kv_caches(model: ModelConfig, num_blocks: int, block_size: int,
                       dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    shape = (2, num_blocks, block_size, model.num_kv_heads, model.head_dim)
    # empty, not zeros: a slot is always written before any attention reads it.
    return [torch.empty(shape, dtype=dtype, device=device) for _ in range(model.num_layers)]
