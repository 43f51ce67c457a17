"""Size and allocate the paged KV cache from the memory left after the weights are loaded.

On a GPU the budget is memory_fraction of the device's total memory, less what the process
holds outside PyTorch (CUDA context, other processes), the weights and the activation peak of
the largest step, which the runner measures with a profile run (a dummy forward and sampler
pass) before calling `num_kv_blocks`; it is also capped by what is actually free. On the CPU it
is what max_num_seqs sequences of max_model_len tokens can use, within a fraction of
available RAM, and its zeros come from the kernel's zero pages (an anonymous mmap):
a block costs resident memory only once a sequence writes to it.
Imports torch and config only.
"""
from __future__ import annotations

import logging
import math
import mmap

import torch

from cormorant.config import CacheConfig, ModelConfig, SchedulerConfig

log = logging.getLogger(__name__)

# Room kept free for the CUDA-graph memory pool (decode activations of at most 512 rows) and
# allocator fragmentation; the profile run cannot see either.
_CUDA_RESERVE_BYTES = 256 << 20


def bytes_per_block(model: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * element


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (tied parameters counted once)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


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


def cuda_kv_budget(device: torch.device, fraction: float, weight_bytes: int,
                   activation_bytes: int) -> int:
    """Bytes for KV blocks on a GPU, after the profile run's activations were freed.

    Fraction rule (vLLM's gpu_memory_utilization): total * fraction must hold everything this
    engine uses: non-PyTorch memory, weights, the activation peak and the cache. Free rule: the
    cache and the next activation peak must fit in what is free now (another engine in the
    same process, or another process, may hold memory the fraction rule cannot see)."""
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    non_torch = max(0, total - free - torch.cuda.memory_reserved(device))
    by_fraction = int(total * fraction) - non_torch - weight_bytes - activation_bytes
    by_free = free - activation_bytes - _CUDA_RESERVE_BYTES
    log.info("GPU memory: total %.1f GiB, free %.1f GiB, non-torch %.2f GiB, weights %.2f GiB, "
             "activation peak %.2f GiB", total / 2**30, free / 2**30, non_torch / 2**30,
             weight_bytes / 2**30, activation_bytes / 2**30)
    return min(by_fraction, by_free)


def num_kv_blocks(model: ModelConfig, cache: CacheConfig, sched: SchedulerConfig,
                  dtype: torch.dtype, device: torch.device, weight_bytes: int = 0,
                  activation_bytes: int | None = None) -> int:
    """How many blocks fit.

    GPU: see cuda_kv_budget; without a measured activation peak (activation_bytes None) the
    process's peak allocation so far stands in for weights plus activations. CPU: what
    max_num_seqs full-length sequences can use (more only feeds the prefix cache), within a
    fraction of available RAM."""
    if cache.num_blocks is not None:
        return cache.num_blocks
    per_block = bytes_per_block(model, cache.block_size, dtype)
    if device.type == "cuda":
        fraction = 0.9 if cache.memory_fraction is None else cache.memory_fraction
        if activation_bytes is None:
            weight_bytes, activation_bytes = torch.cuda.max_memory_allocated(device), 0
        budget = cuda_kv_budget(device, fraction, weight_bytes, activation_bytes)
    else:
        fraction = 0.1 if cache.memory_fraction is None else cache.memory_fraction
        budget = int(available_memory(device) * fraction)
    num_blocks = budget // per_block
    if device.type != "cuda":
        blocks_per_seq = -(-sched.max_model_len // cache.block_size)
        num_blocks = min(num_blocks, sched.max_num_seqs * blocks_per_seq)
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
    if device.type == "cpu":
        return [_lazy_zeros(shape, dtype) for _ in range(model.num_layers)]
    # zeros, not empty: some reads go past what was written (CUDA-graph padding rows read one
    # stale slot; a batched reference decode reads the masked tail of its padded K/V, where
    # probability 0 times a NaN from uninitialised memory would still be NaN). Stale slots
    # always hold finite values the model wrote. Zeroing costs milliseconds on a GPU.
    return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(model.num_layers)]


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor whose pages the OS maps on first write: an anonymous mmap, so it is lazy
    whatever state the process's allocator is in (calloc reuses freed heap memory and clears
    it, which made part of the cache resident in a long-lived process)."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    buffer = mmap.mmap(-1, max(nbytes, 1))  # the tensor holds a reference: unmapped with it
    return torch.frombuffer(buffer, dtype=torch.uint8, count=nbytes).view(dtype).view(shape)
