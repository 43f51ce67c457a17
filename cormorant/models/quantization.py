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

`plan(quant_config, quantization)` is the one decision: which scheme (or None for dense),
with every unsupported combination a ValueError that says what is supported.
`quantize_dense(model, scheme)` turns an already filled dense model (random weights) into the
scheme's format layer by layer: each chosen layer's dense weight is handed to its new method
as float rows, so online formats need nothing else.
Imports: torch, cormorant.layers.linear.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cormorant.layers.linear import LinearBase, LinearMethodChooser

# Modules that register formats (imported on first use, in this order).
FORMAT_MODULES: tuple[str, ...] = ()


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
    if quantization in ("auto", "none"):
        return None
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
