"""Cormorant on random weights of a named configuration: no checkpoint, no tokenizer files.

`build_random_engine(name, ...)` returns the same BuiltEngine that frontend.builder gives for a
real checkpoint (ModelRunner + EngineCore over a model from the registry), with weights from
models.random_init (seeded normal draws, never zeros: zero weights would make every logit a
tie and every matmul trivially predictable) and a synthetic word-level tokenizer whose token i
is the word "t<i>", so that the frontend and the HTTP server detokenize without any files.
`RandomLLM(built)` is the offline LLM API over such an engine.
Imports config, frontend (builder, llm), runner, engine, models, text; torch, tokenizers.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import time

import torch

from cormorant.bench.configs import model_config
from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.engine.core import EngineCore
from cormorant.frontend.builder import BuiltEngine, attention_backend
from cormorant.frontend.llm import LLM
from cormorant.models.random_init import build_random_model
from cormorant.models.loader import resolve_device, resolve_dtype
from cormorant.runner.model_runner import ModelRunner
from cormorant.text.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
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

    def engine_config(self, name: str) -> EngineConfig:
        return EngineConfig(
            model=f"random:{name}", dtype=self.dtype, device=self.device, seed=self.seed,
            cache=CacheConfig(num_blocks=self.num_kv_blocks, memory_fraction=self.memory_fraction,
                              enable_prefix_caching=self.enable_prefix_caching),
            scheduler=SchedulerConfig(max_num_seqs=self.max_num_seqs,
                                      max_num_batched_tokens=self.max_num_batched_tokens,
                                      max_model_len=self.max_model_len),
            attention_backend=self.attention_backend, async_scheduling=self.async_scheduling)


def synthetic_tokenizer(vocab_size: int, eos_token_ids: tuple[int, ...] = ()) -> Tokenizer:
    """Token i <-> the word "t<i>"; unknown words map to 0. Decoding joins words with spaces,
    so a streamed text delta holds one word per token (the serving benchmark counts them)."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    rust = RustTokenizer(models.WordLevel(vocab, unk_token="t0"))
    rust.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=rust)
    return Tokenizer(fast, eos_token_ids=eos_token_ids, name="synthetic")


def build_from_spec(args: dict) -> BuiltEngine:
    """frontend.engine_process's "random" factory: build_random_engine in the child process,
    from {"name": configuration name, "settings": EngineSettings fields}."""
    return build_random_engine(args["name"], EngineSettings(**args["settings"]))


def build_random_engine(name: str, settings: EngineSettings) -> BuiltEngine:
    """A complete engine (runner, KV cache, core) on random weights of configuration `name`."""
    start = time.perf_counter()
    config = settings.engine_config(name)
    torch.manual_seed(settings.seed)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, None, device)
    mconfig = model_config(name)
    # The builder's backend choice, so a benchmark runs the attention `cormorant serve` runs.
    model = build_random_model(mconfig, dtype, device, settings.seed,
                               attn_backend=attention_backend(config.attention_backend, device))
    sched = config.scheduler
    max_len = sched.max_model_len or mconfig.max_position_embeddings
    config = dataclasses.replace(
        config, scheduler=dataclasses.replace(sched, max_model_len=max_len))
    eos = tuple(mconfig.eos_token_ids)
    runner = ModelRunner(config, mconfig, model, device, dtype, eos)
    core = EngineCore(config, runner, eos)
    tokenizer = synthetic_tokenizer(mconfig.vocab_size, eos)
    seconds = time.perf_counter() - start
    log.info("built random %s (%s, %s) in %.1f s", name, device, dtype, seconds)
    return BuiltEngine(config, core, tokenizer, mconfig, runner, seconds)


class RandomLLM(LLM):
    """The offline LLM API over an already built engine (LLM.__init__ only loads from paths).
    Sets exactly the attributes LLM.__init__ sets; keep the two in step."""

    def __init__(self, built: BuiltEngine) -> None:  # noqa: D107 - no super().__init__ on purpose
        self.config = built.config
        self.engine = built.core
        self.tokenizer = built.tokenizer
        self.model_config = built.model_config
        self.runner = built.runner
        self.device = built.runner.device
        self._ids = itertools.count()


def release() -> None:
    """Give the device memory of engines the caller has dropped (del) back before the next one
    is sized. The peak-memory counter is reset too: runner.kv_cache sizes the KV cache from
    total memory minus max_memory_reserved, which would still count the freed engine."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
