"""Quantized weight formats of Hugging Face checkpoints and `--quantization`: which method each layer gets.

Two ways a model becomes quantized:
- **The checkpoint is**: config.json carries a `quantization_config`; its `quant_method`
  ("fp8", "awq", "gptq", "compressed-tensors", ...) names a registered parser that reads the
  config and returns a QuantScheme, or raises ValueError naming what it does support.
- **Quantized at load** (`--quantization NAME` on a dense checkpoint, or on random weights for
  the benchmarks): NAME names a registered online scheme.

A QuantScheme's `chooser(model)` is the LinearMethodChooser (layers.linear) that gives each
linear layer its method (or None: it stays dense, e.g. a layer the config lists as ignored).
Formats live in their own modules and register themselves when imported; FORMAT_MODULES lists
them so that this module can import them on first use.

compressed-tensors checkpoints (quant_method "compressed-tensors") hold one of several
schemes; its parser here reads the config group and hands it to the scheme registered for
the weights' type ("float": FP8, "int": int4/int8), with `ignored(...)` for its ignore list.
`checkpoint_names(model, name)` maps a fused layer (qkv_proj) to its checkpoint layers
(q_proj, k_proj, v_proj), which is how configs name layers.

`plan(quant_config, quantization)` is the one decision: which scheme (or None for dense),
with every unsupported combination a ValueError that says what is supported.
`quantize_dense(model, scheme)` turns an already filled dense model (random weights) into the
scheme's format layer by layer: each chosen layer's dense weight is handed to its new method
as float rows, so online formats need nothing else.
Imports: torch, cormorant.layers.linear.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cormorant.layers.linear import LinearBase, LinearMethodChooser

# Modules that register formats (imported on first use, in this order).
FORMAT_MODULES: tuple[str, ...] = ("cormorant.models.quant_fp8", "cormorant.models.quant_int")


@dataclass(frozen=True)
class QuantScheme:
    """One quantized format as configured for one model: its name for logs and errors, and
    the per-layer choice of methods."""

    name: str
    chooser: Callable[[nn.Module], LinearMethodChooser]
    # Whether its methods take dense float rows (quantizing them): true for online schemes,
    # which quantize_dense (random weights) needs.
    quantizes_dense: bool = False


CheckpointParser = Callable[[dict], QuantScheme]
OnlineFactory = Callable[[], QuantScheme]

_CHECKPOINT: dict[str, CheckpointParser] = {}
_ONLINE: dict[str, OnlineFactory] = {}
# Names of --quantization that are not online weight schemes (handled by the loader itself).
LOADER_NAMES = ("auto", "none", "gguf")


def register_checkpoint_format(quant_method: str) -> Callable[[CheckpointParser],
                                                              CheckpointParser]:
    """Decorator: `parser(quantization_config) -> QuantScheme` for config.json's
    quant_method."""
    def register(parser: CheckpointParser) -> CheckpointParser:
        _CHECKPOINT[quant_method] = parser
        return parser
    return register


def register_online(name: str) -> Callable[[OnlineFactory], OnlineFactory]:
    """Decorator: `factory() -> QuantScheme` for `--quantization name` on dense weights."""
    def register(factory: OnlineFactory) -> OnlineFactory:
        _ONLINE[name] = factory
        return factory
    return register


CompressedParser = Callable[[dict, dict], QuantScheme]
_COMPRESSED: dict[str, CompressedParser] = {}


def register_compressed_tensors(weight_type: str) -> Callable[[CompressedParser],
                                                                CompressedParser]:
    """Decorator: `parser(quantization_config, config_group) -> QuantScheme` for
    compressed-tensors checkpoints whose config group's weights are of `weight_type`
    ("float" or "int")."""
    def register(parser: CompressedParser) -> CompressedParser:
        _COMPRESSED[weight_type] = parser
        return parser
    return register


@register_checkpoint_format("compressed-tensors")
def _compressed_tensors(quant_config: dict) -> QuantScheme:
    groups = quant_config.get("config_groups") or {}
    if not isinstance(groups, dict) or len(groups) != 1:
        raise ValueError(f"compressed-tensors: exactly one config group is supported, the "
                         f"checkpoint has {len(groups) if isinstance(groups, dict) else 0}")
    group = next(iter(groups.values()))
    weights = group.get("weights") or {}
    kind = weights.get("type")
    if kind not in _COMPRESSED:
        raise ValueError(f"compressed-tensors: weights of type {kind!r} are not supported; "
                         f"supported: {', '.join(sorted(_COMPRESSED)) or 'none'}")
    return _COMPRESSED[kind](quant_config, group)


def checkpoint_names(model: nn.Module, name: str) -> list[str]:
    """The checkpoint's layer names behind one of this model's linear layers: a fused layer
    ("...self_attn.qkv_proj") is several ("...q_proj", "...k_proj", "...v_proj")."""
    parent, _, leaf = name.rpartition(".")
    packed = getattr(model, "packed_modules_mapping", {})
    parts = [f"{parent}.{source}" for source, (target, _) in packed.items() if leaf == target]
    return list(dict.fromkeys(parts)) or [name]


def ignored(names: list[str], ignore: list[str]) -> bool:
    """Whether a layer is left dense by an ignore list of names and "re:" patterns
    (compressed-tensors, modules_to_not_convert); a fused layer is ignored only whole, and
    half-ignored is an error (its parts would need two formats)."""
    def hit(n: str) -> bool:
        return any(re.fullmatch(p[3:], n) if p.startswith("re:") else
                   (n == p or n.endswith("." + p)) for p in ignore)
    hits = [hit(n) for n in names]
    if any(hits) and not all(hits):
        raise ValueError(f"the quantization config ignores only some of {names}, which this "
                         "model computes in one fused layer")
    return all(hits)


def _load_formats() -> None:
    for module in FORMAT_MODULES:
        importlib.import_module(module)


def checkpoint_formats() -> list[str]:
    _load_formats()
    return sorted(_CHECKPOINT)


def online_schemes() -> list[str]:
    _load_formats()
    return sorted(_ONLINE)


def plan(quant_config: dict | None, quantization: str) -> QuantScheme | None:
    """The scheme for a Hugging Face checkpoint whose config.json has `quant_config` (None:
    dense) under `--quantization quantization`; None: the dense model as it is."""
    if not quant_config and quantization in ("auto", "none"):
        return None  # the common case: no format module is imported
    _load_formats()
    if quant_config:
        method = str(quant_config.get("quant_method", "?"))
        if method not in _CHECKPOINT:
            raise ValueError(f"quantized checkpoints of quant_method {method!r} are not "
                             f"supported; supported: {', '.join(sorted(_CHECKPOINT)) or 'none'}")
        if quantization not in ("auto", method):
            raise ValueError(f"this checkpoint is quantized ({method}); --quantization "
                             f"{quantization} cannot load it (use auto)")
        return _CHECKPOINT[method](quant_config)
    if quantization in _ONLINE:
        return _ONLINE[quantization]()
    if quantization in LOADER_NAMES:
        raise ValueError(f"--quantization {quantization} applies to GGUF files only")
    raise ValueError(f"unknown quantization {quantization!r}; on a dense checkpoint use one of "
                     f"{', '.join(['auto', 'none', *sorted(_ONLINE)])}")


@torch.no_grad()
def quantize_dense(model: nn.Module, scheme: QuantScheme) -> int:
    """Give each layer the scheme chooses its method, fed from the layer's filled dense weight
    (random weights); returns how many layers changed."""
    if not scheme.quantizes_dense:
        raise ValueError(f"{scheme.name} cannot quantize dense weights at load")
    choose = scheme.chooser(model)
    changed = 0
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, LinearBase) or (method := choose(name, layer)) is None:
            continue
        dense = layer.weight.data
        layer.set_method(method)
        method.load_rows(layer, dense, 0)
        method.finalize(layer)
        del dense
        changed += 1
    return changed
