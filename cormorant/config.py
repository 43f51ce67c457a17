"""Frozen settings for one engine: model, cache and scheduler. Importable from every layer."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the engine needs, read from config.json or GGUF metadata."""

    architecture: str  # registry key, e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, object], ...] | None = None  # frozen dict items
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q, k, v
    qk_norm: bool = False  # Qwen3: RMSNorm on q and k per head
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def rope_scaling_dict(self) -> dict | None:
        return dict(self.rope_scaling) if self.rope_scaling else None


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    # GPU: the fraction of total device memory the engine may use, weights included (as vLLM's
    # gpu_memory_utilization); CPU: the fraction of available RAM the KV cache may take.
    # None: 0.9 on a GPU, 0.1 on the CPU (a laptop keeps room for everything else).
    memory_fraction: float | None = None
    num_blocks: int | None = None  # set to override the memory-based sizing (tests)
    enable_prefix_caching: bool = True
    # The KV cache's element type: "auto" (the model's dtype), or "fp8" / "fp8_e4m3"
    # (float8_e4m3fn with per-layer k/v scales, layers.kv_quant): half the bytes of bf16.
    cache_dtype: str = "auto"


# The per-step token budget when none is set: a step's prompt chunk (chunked prefill is exact,
# so outputs are token-identical) is sized so one step stays short. On the CPU a forward's
# time grows with its tokens, and a 2048-token chunk of a small model took over a minute on a
# busy 2-core machine (issue #21); 512 keeps a step to seconds there, interleaves decodes of
# other requests between a long prompt's chunks, and costs little throughput (the CPU is
# compute-bound well below 512 tokens). On a GPU larger steps are nearly free.
GPU_MAX_NUM_BATCHED_TOKENS = 2048
CPU_MAX_NUM_BATCHED_TOKENS = 512


def default_max_num_batched_tokens(device_type: str) -> int:
    """The token budget of a step on `device_type` ("cpu", "cuda", ...) when none is set."""
    return CPU_MAX_NUM_BATCHED_TOKENS if device_type == "cpu" else GPU_MAX_NUM_BATCHED_TOKENS


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    # None: by device (default_max_num_batched_tokens), resolved when the engine is built;
    # a scheduler given None uses the GPU value.
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None  # None: the model's own context length
    # The waiting queue's order: "fifo" (arrival), or "fair" (weighted fair share across
    # tenants, priority inside a tenant).
    policy: str = "fifo"


@dataclass(frozen=True)
class EngineConfig:
    model: str  # HF directory or .gguf file
    # "auto": the checkpoint's weights; "random": seeded random weights of the checkpoint's
    # config.json (benchmarks, tests), with a synthetic tokenizer when there are no tokenizer files.
    load_format: str = "auto"
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    cache: CacheConfig = CacheConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    normalize_nfc: bool = False
    strip_control_chars: bool = False
    attention_backend: str = "auto"  # auto | torch | triton
    enforce_eager: bool = False  # GPU: skip CUDA graphs; CPU: skip the compiled decode step
    # A quantized GGUF on the CPU: "auto"/"gguf" keep linear weights in blocks (int4/int8
    # kernels, models.loader), "none" dequantizes them (the reference path).
    quantization: str = "auto"
    # CPU threads for torch's kernels; None: the cores this process may use (affinity and
    # cgroup quota, runner.cpu_threads). Process-wide: the last engine built sets it.
    threads: int | None = None
    # Schedule and launch step n+1 before reading step n's sampled ids (engine.core).
    # None (default): on where the runner computes asynchronously (CUDA), off on the CPU. On
    # an H100 it cuts batch-1 decode and serving ITL and speeds up B3's prefill-heavy shapes
    # once kernels are compiled (benchmarks/RESULTS.md; an earlier "regression" was Triton
    # compiling mid-run, since fixed).
    async_scheduling: bool | None = None
    # Tensor parallelism: one engine over this many devices, a worker process per device
    # (runner.tp_executor); on the CPU the workers share it (gloo), which is how CI tests it.
    tensor_parallel_size: int = 1
