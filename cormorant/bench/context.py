"""RunContext: what every benchmark of one `cormorant bench` run shares.

The device, the dtype, the ceilings measured once at the start, the scale (full | quick |
tiny), the output folder and a deadline that peers and B4's sweep respect; the engine
settings a benchmark sets (EngineSettings -> an EngineConfig on random weights of a named
configuration); `release()` between engines; and the environment of the suite's child
processes.
Imports config, bench.configs, bench.floors, models.loader; torch.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cormorant.bench.configs import config_dir, resolve_name
from cormorant.bench.floors import Ceilings, measure_ceilings
from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.models.loader import resolve_device, resolve_dtype


@dataclass(frozen=True)
class EngineSettings:
    """The engine knobs a benchmark sets; the rest keep EngineConfig's defaults."""

    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    num_kv_blocks: int | None = None
    memory_fraction: float | None = None
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"
    async_scheduling: bool | None = None  # None: on for CUDA
    kv_cache_dtype: str = "auto"  # auto (the model's dtype) | fp8
    tensor_parallel_size: int = 1
    quantization: str = "none"  # fp8 / int4 / int8: the random weights quantized at load

    def engine_config(self, name: str) -> EngineConfig:
        """Configuration `name` (bench.configs) on seeded random weights."""
        return EngineConfig(
            model=str(config_dir(name)), load_format="random", dtype=self.dtype,
            device=self.device, seed=self.seed,
            cache=CacheConfig(num_blocks=self.num_kv_blocks, memory_fraction=self.memory_fraction,
                              enable_prefix_caching=self.enable_prefix_caching,
                              cache_dtype=self.kv_cache_dtype),
            scheduler=SchedulerConfig(max_num_seqs=self.max_num_seqs,
                                      max_num_batched_tokens=self.max_num_batched_tokens,
                                      max_model_len=self.max_model_len),
            attention_backend=self.attention_backend, async_scheduling=self.async_scheduling,
            tensor_parallel_size=self.tensor_parallel_size, quantization=self.quantization)


def release() -> None:
    """Give the device memory of engines the caller has dropped (del) back before the next one
    is sized. The peak-memory counter is reset too: runner.kv_cache sizes the KV cache from
    total memory minus max_memory_reserved, which would still count the freed engine."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@dataclass
class RunContext:
    scale: str
    device: torch.device
    dtype: torch.dtype
    ceilings: Ceilings
    out_dir: Path
    deadline: float | None = None  # time.monotonic() after which optional work is skipped
    profile: bool = False  # profile decode steps after each timed run (bench.profiling)
    async_scheduling: bool | None = None  # None: on for CUDA
    engine_process: bool | None = None  # B4's server: engine core in its own process (None:
    # as `cormorant serve` decides: on for CUDA)
    threads: int | None = None  # B5: CPU threads of both peers (None: the usable cores)
    tensor_parallel_size: int = 1  # B1-B4: devices per engine
    b4b_rate: float | None = None  # B4 with a batch: the request rate (None: the scale's)
    kv_cache_dtype: str = "auto"  # the offline benchmarks' KV cache: auto | fp8 (B1-B3)
    quantization: str = "none"  # B1-B3's weights: fp8 / int4 / int8 quantize them at load
    env: dict = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        return self.scale == "tiny"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def dtype_bytes(self) -> int:
        return torch.tensor([], dtype=self.dtype).element_size()

    @property
    def kv_dtype_bytes(self) -> int:
        """Bytes of one KV-cache element: 1 with an fp8 cache, else the dtype's."""
        return 1 if self.kv_cache_dtype.startswith("fp8") else self.dtype_bytes

    @property
    def body_bytes(self) -> float | None:
        """Bytes per decoder-projection weight under --quantization (fp8: one; int4 / int8:
        codes plus a model-dtype scale per group of 128, symmetric, so no zero points), for
        the floors; None: the dtype's."""
        if self.quantization == "fp8":
            return 1
        bits = {"int4": 4, "int8": 8}.get(self.quantization)
        return None if bits is None else bits / 8 + self.dtype_bytes / 128

    def model(self, name: str) -> str:
        """The configuration to run for `name`: itself, or its tiny stand-in in a tiny run."""
        return resolve_name(name, self.is_tiny)

    def settings(self, **engine) -> EngineSettings:
        engine.setdefault("async_scheduling", self.async_scheduling)
        engine.setdefault("kv_cache_dtype", self.kv_cache_dtype)
        engine.setdefault("tensor_parallel_size", self.tensor_parallel_size)
        engine.setdefault("quantization", self.quantization)
        return EngineSettings(dtype=self.dtype_name, device=str(self.device), **engine)

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()


def make_context(scale: str, device: str, dtype: str, out_dir: Path,
                 budget_s: float | None, profile: bool = False,
                 quantization: str = "auto") -> RunContext:
    dev = resolve_device(device)
    # bf16 is what the floors and targets assume; "auto" keeps float32 on the CPU,
    # where smoke runs only prove that the suite works.
    dt = resolve_dtype(dtype, None, dev)
    deadline = None if budget_s is None else time.monotonic() + budget_s
    ceilings = measure_ceilings(dev, dt, fp8=quantization == "fp8")
    release()  # the measurement's GiB buffers must not count against the first KV cache
    return RunContext(scale, dev, dt, ceilings, out_dir, deadline, profile,
                      quantization=quantization)


def child_env() -> dict[str, str]:
    """The environment for the peer and server subprocesses: this checkout importable from any
    working directory, output unbuffered (their logs are read while they run)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false"}
