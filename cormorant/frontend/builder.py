"""Build one engine from an EngineConfig: tokenizer, model weights, KV cache, engine core.

An engine is an object, never a module-level singleton, so one process can hold several.
With load_format "random" the weights are seeded random draws of the checkpoint's
architecture (models.loader), and the tokenizer is the directory's own when it has one, else
a synthetic word-level one (text.synthetic): a directory with only config.json is an engine.
With tensor_parallel_size N > 1 this process loads no weights: the runner is a
TensorParallelExecutor whose N worker processes each load and run a shard.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from cormorant.config import EngineConfig, ModelConfig, default_max_num_batched_tokens
from cormorant.engine.core import EngineCore
from cormorant.layers.attention import TorchAttention
from cormorant.models.loader import (check_load_format, load_model, load_model_config,
                                     resolve_device, resolve_dtype)
from cormorant.runner.cpu_threads import configure_threads
from cormorant.runner.model_runner import ModelRunner
from cormorant.runner.tp_executor import TensorParallelExecutor
from cormorant.text.guidance_backend import GuidanceBackend
from cormorant.text.synthetic import has_tokenizer_files, synthetic_tokenizer
from cormorant.text.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class BuiltEngine:
    config: EngineConfig  # with max_model_len resolved
    core: EngineCore
    tokenizer: Tokenizer
    model_config: ModelConfig
    runner: ModelRunner | TensorParallelExecutor
    load_seconds: float

    @property
    def worker_pids(self) -> list[int]:
        """The engine's processes besides this one (tensor-parallel workers): their CPU time
        is the engine's progress too, while a step waits on them."""
        return self.runner.pids if isinstance(self.runner, TensorParallelExecutor) else []

    def check_alive(self) -> None:
        """Raise if what the engine runs outside this process has died (a TP worker)."""
        if isinstance(self.runner, TensorParallelExecutor):
            self.runner.check_alive()

    def close(self) -> None:
        """Stop what the engine runs outside this process (tensor-parallel workers)."""
        if isinstance(self.runner, TensorParallelExecutor):
            self.runner.close()


def attention_backend(name: str, device: torch.device):
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TorchAttention()
    try:
        from cormorant.layers.triton_attention import TritonAttention
    except ImportError as e:
        if name == "triton":
            raise ValueError(f"attention backend 'triton' is not available: {e}") from e
        log.warning("Triton is not available (%s); using the PyTorch attention backend", e)
        return TorchAttention()
    return TritonAttention()


def build_engine(config: EngineConfig) -> BuiltEngine:
    """Everything from the config alone; the waiting queue is config.scheduler.policy's."""
    start = time.perf_counter()
    if config.seed is not None:
        torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, config.model, device)
    if device.type == "cpu":
        configure_threads(config.threads)
    tokenizer = build_tokenizer(config)  # first: it also validates load_format
    if config.tensor_parallel_size != 1:  # the workers load the model, shard by shard
        model_config = load_model_config(config.model)
        config = _resolve_lengths(config, model_config, device.type)
        eos = _eos_ids(model_config, tokenizer)
        runner = TensorParallelExecutor(config, model_config, eos, device)
    else:
        model, model_config = load_model(config.model, dtype, device,
                                         attention_backend(config.attention_backend, device),
                                         load_format=config.load_format,
                                         seed=config.seed or 0,
                                         quantization=config.quantization)
        config = _resolve_lengths(config, model_config, device.type)
        eos = _eos_ids(model_config, tokenizer)
        runner = ModelRunner(config, model_config, model, device, dtype, eos)
    # xgrammar's matchers stay in this process unless CORMORANT_GRAMMAR_PROCESS=1 (b1s on an
    # H200, 2026-12-06: 0.90 of unconstrained with the grammar process, 0.91-0.93 without).
    core = EngineCore(config, runner, eos,
                      grammar=GuidanceBackend(tokenizer, host_buffer=grammar_host_buffer(device)))
    seconds = time.perf_counter() - start
    log.info("loaded %s (%s, %s) in %.1f s", config.model, device, dtype, seconds)
    return BuiltEngine(config, core, tokenizer, model_config, runner, seconds)


def grammar_host_buffer(device: torch.device):
    """For GuidanceBackend's host_buffer: on CUDA, writable uint8 arrays in pinned host memory
    (the grammar process's bits land there, and the device copy starts from them)."""
    if device.type != "cuda":
        return None
    return lambda nbytes: torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).numpy()


def _eos_ids(model_config: ModelConfig, tokenizer: Tokenizer) -> tuple[int, ...]:
    return tuple(sorted(set(model_config.eos_token_ids) | set(tokenizer.eos_token_ids)))


def build_tokenizer(config: EngineConfig) -> Tokenizer:
    """The tokenizer an engine of `config` uses (also for a client in another process): the
    model's own, or, for random weights without tokenizer files, a synthetic one over the
    config's vocabulary that ends on the config's eos ids."""
    if check_load_format(config.load_format) == "random" and not has_tokenizer_files(
            config.model):
        model_config = load_model_config(config.model)
        return synthetic_tokenizer(model_config.vocab_size, tuple(model_config.eos_token_ids))
    return load_tokenizer(config.model)


def _resolve_lengths(config: EngineConfig, model_config: ModelConfig,
                     device_type: str) -> EngineConfig:
    """max_model_len (the model's own) and the step's token budget (by device) when unset."""
    sched = config.scheduler
    max_len = sched.max_model_len or model_config.max_position_embeddings
    if max_len > model_config.max_position_embeddings:
        raise ValueError(f"max_model_len {max_len} exceeds the model's context length "
                         f"{model_config.max_position_embeddings}")
    budget = sched.max_num_batched_tokens
    if budget is None:
        budget = default_max_num_batched_tokens(device_type)
    sched = dataclasses.replace(sched, max_model_len=max_len, max_num_batched_tokens=budget)
    return dataclasses.replace(config, scheduler=sched)
