"""A quantized GGUF kept in its blocks: which method each linear layer gets.

`gguf_chooser(reader, model)` is the LinearMethodChooser (layers.linear) of a GGUF file: a
fused layer (qkv, gate_up) gets the method its parts' GGUF types call for
(layers.gguf_linear.gguf_method_for). The LM head stays dense in the model dtype: the
quantized kernels return bf16, whose rounding of logits near 25 (steps of 0.125) flips
SmolLM2's greedy first answer token (measured: "The" 25.33 vs "L" 25.24 in fp32).
Imports: torch, gguf, cormorant.layers, models.gguf_loader.
"""
from __future__ import annotations

from collections import Counter

from gguf import GGUFReader
from torch import nn

from cormorant.layers.gguf_linear import gguf_method_for
from cormorant.layers.linear import LinearBase, LinearMethod, LinearMethodChooser
from cormorant.models import gguf_loader


def gguf_chooser(reader: GGUFReader, model: nn.Module) -> LinearMethodChooser:
    types = gguf_loader.linear_types(reader)
    packed = getattr(model, "packed_modules_mapping", {})

    def choose(name: str, layer: LinearBase) -> LinearMethod | None:
        parent, _, leaf = name.rpartition(".")
        parts = [f"{parent}.{source}" for source, (target, _) in packed.items()
                 if leaf == target] or [name]
        return gguf_method_for(set().union(*(types.get(p, set()) for p in parts)))

    return choose


def describe(model: nn.Module) -> str:
    """e.g. "211 Int4CpuMethod, 1 Int8CpuMethod linear layers"."""
    counts = Counter(type(m.method).__name__ for m in model.modules()
                     if isinstance(m, LinearBase))
    return ", ".join(f"{n} {name}" for name, n in counts.most_common()) + " linear layers"
