"""The one table of engine arguments: CLI flags, `LLM(**kwargs)` and registry options come from it.

Each `EngineArg` names one setting once: its type, help, where it lands in EngineConfig
("seed", "cache.num_blocks", "scheduler.policy"), the commands that take it and, where a
command legitimately differs, its default there and why. Defaults live in config.py's
dataclasses and are read from them here, so they are written once. Commands: `serve`,
`generate`, `chat`, `bench` (flags), `llm` (LLM keywords) and `registry` (a registry
file's per-model `engine` options).

`add_engine_args(parser, command)` adds the flags; `engine_config_from(options, command)`
turns an argparse namespace (the table's names only), an LLM keyword dict or a registry
`engine` table (every name checked) into an EngineConfig.
Imports config and the standard library only: importable from every layer.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cormorant.config import EngineConfig

COMMANDS = ("serve", "generate", "chat", "bench", "llm", "registry")
_FROM_CONFIG = object()  # the default is EngineConfig's (or its cache / scheduler's)


class EngineArgError(ValueError):
    """An engine argument that is unknown or has a value of the wrong kind."""


class UnknownEngineArgError(EngineArgError, TypeError):
    """A name the table does not know for this command (a TypeError too: LLM(**kwargs))."""


@dataclass(frozen=True)
class EngineArg:
    name: str  # the LLM keyword and registry option; the flag is --name-with-dashes
    type: type  # int | float | str | bool
    help: str
    field: str | None  # where it lands in EngineConfig; None: how the engine is run
    default: Any = _FROM_CONFIG
    optional: bool = False  # None is a value (meaning: decided later, e.g. by the device)
    choices: tuple[str, ...] = ()
    commands: tuple[str, ...] = COMMANDS
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # per command
    note: str = ""  # why some command leaves it out or changes its default
    none_means: str = ""  # what a None default means, for the help

    def default_for(self, command: str) -> Any:
        if command in self.defaults:
            return self.defaults[command]
        return _config_default(self.field) if self.default is _FROM_CONFIG else self.default

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _config_default(path: str | None) -> Any:
    """EngineConfig's default at a field path such as "cache.num_blocks"."""
    cls: Any = EngineConfig
    value = None
    for part in (path or "").split("."):
        f = {f.name: f for f in dataclasses.fields(cls)}[part]
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        cls = type(value)
    return value


_OFFLINE = ("generate", "chat", "llm")
_BENCH_NOTE = "bench: each benchmark sets its own (bench/offline.py B1_ENGINE ...)"
_AS_SERVED = "bench: the default, so that benchmarks measure what `serve` runs"
_NORMALIZE_NOTE = "offline only: the server tokenizes prompts as sent (server.prompts)"

ENGINE_ARGS: tuple[EngineArg, ...] = (
    EngineArg("model", str, "Hugging Face model directory or .gguf file", "model",
              default=None, optional=True, none_means="the embedded SmolLM2-135M-Instruct",
              commands=("serve", "generate", "chat"),
              note="LLM: the first positional argument; registry: the entry's source; "
                   "bench: named configurations"),
    EngineArg("load_format", str, "auto: the checkpoint's weights; random: seeded random "
              "weights of its config.json", "load_format", choices=("auto", "random"),
              commands=("serve", "generate", "chat", "llm", "registry"),
              note="bench: always random weights"),
    EngineArg("dtype", str, "auto | float32 | float16 | bfloat16; auto: float32 on the CPU, "
              "on GPUs the checkpoint's half dtype, else bfloat16", "dtype",
              commands=("serve", "generate", "chat", "bench", "llm"),
              note="registry: the model entry's own dtype key"),
    EngineArg("device", str, "auto | cpu | cuda | cuda:N", "device",
              commands=("serve", "generate", "chat", "bench", "llm"),
              note="registry: the model entry's own device key"),
    EngineArg("quantization", str, "weight quantization. A quantized GGUF on the CPU: gguf "
              "keeps the linear weights in their blocks (int4 kernels for Q4_0/Q4_1/Q4_K, int8 "
              "for other types), none dequantizes them to the dtype (exact: token-identical to "
              "transformers). A dense checkpoint or random weights: fp8 quantizes the linear "
              "layers to FP8 at load (per-channel scales), int4 / int8 to integers (symmetric, "
              "group 128). A checkpoint quantized already (FP8, AWQ, GPTQ, compressed-tensors) "
              "loads as it is under auto. auto: the checkpoint's own format, else none",
              "quantization", choices=("auto", "none", "gguf", "fp8", "int4", "int8"),
              commands=("serve", "generate", "chat", "bench", "llm", "registry"),
              defaults={"bench": "none"},
              note="bench: random weights, quantized at load when fp8 / int4 / int8 (the "
              "floors count the quantized bytes)"),
    EngineArg("threads", int, "CPU threads for the model's kernels", "threads",
              optional=True, none_means="the cores this process may use (affinity and cgroup "
              "quota)", commands=("serve", "generate", "chat", "bench", "llm", "registry")),
    EngineArg("seed", int, "seeds the weights of random models and the sampling of requests "
              "that bring no seed of their own", "seed",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_BENCH_NOTE),
    EngineArg("max_model_len", int, "longest prompt + completion in tokens",
              "scheduler.max_model_len", optional=True, none_means="the model's context length",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_BENCH_NOTE),
    EngineArg("max_num_seqs", int, "most sequences in one step", "scheduler.max_num_seqs",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_BENCH_NOTE),
    EngineArg("max_num_batched_tokens", int, "most tokens computed in one step (a long "
              "prompt is prefilled in chunks of this size)", "scheduler.max_num_batched_tokens",
              optional=True, none_means="512 on the CPU, so that one step stays short; 2048 "
              "on a GPU",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_BENCH_NOTE),
    EngineArg("scheduling", str, "the waiting queue: weighted fair across tenants, or FIFO",
              "scheduler.policy", choices=("fair", "fifo"), commands=("serve",),
              defaults={"serve": "fair"},
              note="serve: fair (API keys are tenants); registry: the server's flag applies "
                   "to every model; offline: FIFO"),
    EngineArg("block_size", int, "tokens per KV-cache block", "cache.block_size",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_BENCH_NOTE),
    EngineArg("num_kv_blocks", int, "KV-cache size in blocks", "cache.num_blocks",
              optional=True, none_means="sized from free memory",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_BENCH_NOTE),
    EngineArg("memory_fraction", float, "GPU: share of device memory to use, weights "
              "included; CPU: share of free RAM for the KV cache", "cache.memory_fraction",
              optional=True, none_means="0.9 on a GPU, 0.1 on the CPU",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_BENCH_NOTE),
    EngineArg("kv_cache_dtype", str, "KV-cache element type: auto is the model's dtype; fp8 "
              "(= fp8_e4m3) stores float8_e4m3fn with per-layer scales (the checkpoint's "
              "k_scale/v_scale, else 1.0): twice the blocks of bf16", "cache.cache_dtype",
              choices=("auto", "fp8", "fp8_e4m3"),
              commands=("serve", "generate", "chat", "bench", "llm", "registry"),
              note="bench: the offline benchmarks' engines (B1-B3) use it, B4's server not"),
    EngineArg("enable_prefix_caching", bool, "reuse the KV blocks of shared prompt prefixes",
              "cache.enable_prefix_caching",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_BENCH_NOTE),
    EngineArg("attention_backend", str, "auto: Triton on CUDA, PyTorch on the CPU",
              "attention_backend", choices=("auto", "torch", "triton"),
              commands=("serve", "generate", "chat", "llm", "registry"), note=_AS_SERVED),
    EngineArg("enforce_eager", bool, "no CUDA graphs (GPU), no compiled decode step (CPU)",
              "enforce_eager",
              commands=("serve", "generate", "chat", "llm", "registry"), note=_AS_SERVED),
    EngineArg("async_scheduling", bool, "schedule step n+1 while step n runs",
              "async_scheduling", optional=True, none_means="on for CUDA, off on the CPU",
              defaults={c: False for c in _OFFLINE},
              note="off in the offline API (LLM, generate, chat): there engine.step() returns "
                   "the outputs of the step it ran"),
    EngineArg("tensor_parallel_size", int, "devices one engine spans (a worker process per "
              "device, each holding a shard of every layer); CUDA: cuda:0..N-1, or from the "
              "given cuda:K on; the CPU: N workers on it", "tensor_parallel_size",
              commands=("serve", "generate", "chat", "bench", "llm", "registry")),
    EngineArg("engine_process", bool, "run the engine core in its own process (msgpack over a "
              "pipe), so HTTP and detokenization do not share a GIL with it", None,
              default=None, optional=True, none_means="on for CUDA, off on the CPU",
              commands=("serve", "bench"),
              note="not an EngineConfig field: how a server runs its engines (bench: B4's)"),
    EngineArg("normalize_nfc", bool, "NFC-normalize prompt text before tokenization",
              "normalize_nfc", commands=_OFFLINE, note=_NORMALIZE_NOTE),
    EngineArg("strip_control_chars", bool, "drop control characters from prompt text",
              "strip_control_chars", commands=_OFFLINE, note=_NORMALIZE_NOTE),
)
BY_NAME = {arg.name: arg for arg in ENGINE_ARGS}


def args_for(command: str) -> tuple[EngineArg, ...]:
    assert command in COMMANDS, command
    return tuple(arg for arg in ENGINE_ARGS if command in arg.commands)


def names_for(command: str) -> tuple[str, ...]:
    return tuple(arg.name for arg in args_for(command))


def add_engine_args(parser: argparse.ArgumentParser, command: str) -> None:
    """The command's engine flags, in a group of their own (bools get --no-... too)."""
    group = parser.add_argument_group("engine")
    for arg in args_for(command):
        default = arg.default_for(command)
        shown = f" (default: {arg.none_means if default is None else default})"
        kwargs: dict[str, Any] = {"default": default, "help": arg.help + shown}
        if arg.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = arg.type
            if arg.choices:
                kwargs["choices"] = arg.choices
        group.add_argument(arg.flag, dest=arg.name, **kwargs)


def engine_config_from(options: Mapping[str, Any] | argparse.Namespace, command: str,
                       **given: Any) -> EngineConfig:
    """An EngineConfig from the table's arguments. A namespace holds other flags too: only
    the command's table names are read from it. A mapping (LLM keywords, a registry entry)
    must hold nothing else (UnknownEngineArgError, naming the valid ones), and every value is
    checked against the table (EngineArgError). `given`: values the caller settles itself,
    e.g. model= and, for the registry, dtype= and device=."""
    if isinstance(options, argparse.Namespace):
        values = {n: getattr(options, n) for n in names_for(command) if hasattr(options, n)}
    else:
        valid = names_for(command)
        if unknown := sorted(set(options) - set(valid)):
            raise UnknownEngineArgError(
                f"unknown engine argument{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
        values = {arg.name: arg.defaults[command] for arg in args_for(command)
                  if command in arg.defaults}  # where this command differs from EngineConfig
        values.update((name, check_value(BY_NAME[name], v)) for name, v in options.items())
    values.update(given)
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {"cache": {}, "scheduler": {}}
    for name, value in values.items():
        where = BY_NAME[name].field
        if where is None:
            continue
        part, _, rest = where.partition(".")
        if rest:
            nested[part][rest] = value
        else:
            top[part] = value
    defaults = EngineConfig(model="")
    for part, changes in nested.items():
        top[part] = dataclasses.replace(getattr(defaults, part), **changes)
    return EngineConfig(**top)


def check_value(arg: EngineArg, value: Any) -> Any:
    """The value if it has the argument's type (an int passes for a float), else
    EngineArgError."""
    if value is None and arg.optional:
        return value
    ok = isinstance(value, arg.type) and (arg.type is bool or not isinstance(value, bool))
    if arg.type is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        kind = arg.type.__name__ + (" or None" if arg.optional else "")
        raise EngineArgError(f"engine argument {arg.name!r} must be {kind}, got {value!r}")
    if arg.choices and value not in arg.choices:
        raise EngineArgError(f"engine argument {arg.name!r} must be one of "
                             f"{', '.join(arg.choices)}, got {value!r}")
    return value
