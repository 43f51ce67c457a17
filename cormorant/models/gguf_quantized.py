"""A quantized GGUF kept in its blocks: each linear layer's method, and a quantized LM head.

`gguf_chooser(reader, model)` is the LinearMethodChooser (layers.linear) of a GGUF file: a
fused layer (qkv, gate_up) gets the method its parts' GGUF types call for
(layers.gguf_linear.gguf_method_for). `quantize_lm_head(model, reader)` gives the LM head its
own quantized weight: for a tied model (SmolLM2) the output projection is the embedding
table, the largest matrix read per token; the embedding lookup keeps the dense table.
Imports: torch, gguf, cormorant.layers, models.gguf_loader.
"""
from __future__ import annotations

from gguf import GGMLQuantizationType, GGUFReader
from torch import nn

from cormorant.layers.gguf_linear import gguf_method_for
from cormorant.layers.linear import (ColumnParallelLinear, LinearBase, LinearMethod,
                                     LinearMethodChooser)
from cormorant.layers.parallel import tp_rank_and_size
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


def quantize_lm_head(model: nn.Module, reader: GGUFReader) -> bool:
    """Swap the dense LM head for a quantized one read from the file's output (or, tied,
    embedding) tensor; True if done. Skipped for dense types and tensor parallelism."""
    tensors = {t.name: t for t in reader.tensors}
    tensor = tensors.get("output.weight", tensors.get("token_embd.weight"))
    head = getattr(model, "lm_head", None)
    if tensor is None or head is None or tp_rank_and_size()[1] != 1:
        return False
    method = gguf_method_for({GGMLQuantizationType(tensor.tensor_type)})
    if method is None:
        return False
    vocab, hidden = head.weight.shape
    new_head = ColumnParallelLinear(hidden, vocab, bias=False, method=method)
    new_head.weight_loader(new_head.weight, gguf_loader.block_tensor(tensor))
    model.lm_head = new_head
    return True
