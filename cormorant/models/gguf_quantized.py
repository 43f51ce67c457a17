"""A quantized GGUF kept in its blocks: which method each linear layer gets.

`gguf_chooser(reader, model)` is the LinearMethodChooser (layers.linear) of a GGUF file: a
fused layer (qkv, gate_up) gets the method its parts' GGUF types call for
(layers.gguf_linear.gguf_method_for). `rescore_lm_head(model)` swaps a quantized file's LM
head for layers.rescored_head's (a quantized copy scores the vocabulary, the top rows are
recomputed exactly): a plain quantized head returns bf16 logits, whose steps of 0.125 near 25
flipped SmolLM2's greedy first answer token ("The" 25.33 vs "L" 25.24 in fp32).
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
    """e.g. "150 Int4CpuMethod linear layers"."""
    counts = Counter(type(m.method).__name__ for m in model.modules()
                     if isinstance(m, LinearBase))
    return ", ".join(f"{n} {name}" for name, n in counts.most_common()) + " linear layers"


def rescore_lm_head(model: nn.Module) -> bool:
    """Give the model a RescoredLMHead over its dense LM head (one rank only); True if done."""
    from cormorant.layers.embedding import ParallelLMHead
    from cormorant.layers.parallel import tp_rank_and_size
    from cormorant.layers.rescored_head import RescoredLMHead

    head = getattr(model, "lm_head", None)
    if not isinstance(head, ParallelLMHead) or tp_rank_and_size()[1] != 1:
        return False
    model.lm_head = RescoredLMHead(head)
    return True
