"""The CPU KV cache is sized for what the engine can use (max_num_seqs sequences of
max_model_len tokens, within the RAM fraction) and costs resident memory only where written."""
from __future__ import annotations

import torch

from cormorant.config import CacheConfig, ModelConfig, SchedulerConfig
from cormorant.runner.kv_cache import allocate_kv_caches, num_kv_blocks

MODEL = ModelConfig("LlamaForCausalLM", vocab_size=100, hidden_size=64, intermediate_size=128,
                    num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
                    max_position_embeddings=8192)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_cpu_cache_is_sized_for_max_num_seqs_full_length_sequences():
    sched = SchedulerConfig(max_num_seqs=4, max_model_len=1000)
    blocks = num_kv_blocks(MODEL, CacheConfig(block_size=16), sched, torch.float32,
                           torch.device("cpu"))
    assert blocks == 4 * 63  # ceil(1000 / 16) blocks per sequence


def test_cpu_cache_is_zero_and_lazily_resident():
    # In a long-lived process (this one runs the whole suite) calloc reused freed heap memory
    # and cleared it, so an earlier numpy-zeros cache was partly resident; an anonymous mmap
    # is lazy whatever the allocator's state.
    before = _rss_bytes()
    caches = allocate_kv_caches(MODEL, 2048, 16, torch.float32, torch.device("cpu"))
    nbytes = sum(c.nbytes for c in caches)
    assert nbytes == 4 * 2 * 2048 * 16 * 2 * 64 * 4  # 128 MiB
    assert _rss_bytes() - before < nbytes // 4  # untouched pages are not resident
    assert caches[0].shape == (2, 2048, 16, 2, 64) and caches[0].dtype == torch.float32
    assert not caches[0][:, :8].any() and not caches[3][:, -8:].any()
    caches[0][1, 5] = 1.0
    assert caches[0].sum() == 16 * 2 * 64 and caches[0].is_contiguous()
