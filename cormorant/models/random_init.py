"""Models with random weights built straight from a ModelConfig: benchmarks and tests.

`build_random_model(model_config, dtype, device, seed)` builds the registered architecture on
the target device (no checkpoint, nothing written to disk: an 8B model is filled in place on
the GPU in about a second) and fills every parameter with seeded random values, never zeros,
so the matmuls, norms and attention do the same work, at the same speed, as with real weights.
Projections and embeddings get N(0, std) (std 0.02, the usual initializer range), norm
weights N(1, 0.02), biases N(0, 0.02). Under tensor parallelism (a world size above 1) every
rank draws the full tensors, in the unsharded model's order, and keeps its shard through the
layers' weight loaders: the same seed gives the same model at every world size.

Engines reach it through the config: EngineConfig(model=a directory with config.json,
load_format="random") -> models.loader.load_model -> here. The benchmarks' named
configurations (Qwen3-0.6B, Llama-3.1-8B, ...) are such directories (bench.configs.config_dir).
Imports: torch, config, cormorant.layers, this package's registry and weights.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from cormorant.config import ModelConfig
from cormorant.layers.attention import AttentionBackend, TorchAttention
from cormorant.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from cormorant.layers.parallel import single_rank, tp_rank_and_size
from cormorant.models.registry import build_model, get_model_class
from cormorant.models.weights import load_weights


def default_attention_backend(device: torch.device) -> AttentionBackend:
    """What the engine builder picks for "auto": Triton on CUDA when it imports, else torch."""
    if device.type == "cuda":
        try:
            from cormorant.layers.triton_attention import TritonAttention
            return TritonAttention()
        except ImportError:
            pass
    return TorchAttention()


@torch.no_grad()
def build_random_model(model_config: ModelConfig, dtype: torch.dtype = torch.bfloat16,
                       device: torch.device | str = "cuda", seed: int = 0, *,
                       attn_backend: AttentionBackend | None = None, std: float = 0.02
                       ) -> nn.Module:
    """The model for model_config, in eval mode, weights drawn on `device` from `seed`.
    attn_backend: default as the engine's "auto" (Triton on CUDA, else TorchAttention)."""
    device = torch.device(device)
    backend = attn_backend or default_attention_backend(device)
    model = build_model(model_config, backend, dtype, device)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    if tp_rank_and_size()[1] > 1:
        load_weights(model, _full_weights(model_config, backend, dtype, device, generator, std))
        return model
    for name, param in model.named_parameters():  # tied parameters appear once
        _draw(name, param, generator, std)
    return model


def _draw(name: str, t: torch.Tensor, generator: torch.Generator, std: float) -> None:
    if name.endswith("bias"):
        t.normal_(0.0, 0.02, generator=generator)
    elif "norm" in name:
        t.normal_(1.0, 0.02, generator=generator)
    else:
        t.normal_(0.0, std, generator=generator)


def _full_weights(model_config: ModelConfig, backend: AttentionBackend, dtype: torch.dtype,
                  device: torch.device, generator: torch.Generator, std: float
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """The unsharded model's random tensors, drawn as a world of one draws them, under
    checkpoint names (fused projections split back into q/k/v and gate/up)."""
    with single_rank(), torch.device("meta"):
        full = get_model_class(model_config.architecture)(model_config, backend)
    unpacked = {value: key for key, value in full.packed_modules_mapping.items()}
    for name, param in full.named_parameters():
        tensor = torch.empty(param.shape, dtype=dtype, device=device)
        _draw(name, tensor, generator, std)
        module_name, _, param_name = name.rpartition(".")
        module = full.get_submodule(module_name)
        if isinstance(module, QKVParallelLinear):
            kv_size = module.num_kv_heads * module.head_dim
            parts = zip(("q", "k", "v"), tensor.split(
                [module.num_heads * module.head_dim, kv_size, kv_size]))
        elif isinstance(module, MergedColumnParallelLinear):
            parts = enumerate(tensor.split(module.output_sizes))
        else:
            yield name, tensor
            continue
        parent, _, fused = module_name.rpartition(".")
        for shard_id, part in parts:
            yield f"{parent}.{unpacked[(fused, shard_id)]}.{param_name}", part
