"""Models with random weights built straight from a ModelConfig: benchmarks and tests.

`build_random_model(model_config, dtype, device, seed)` builds the registered architecture on
the target device (no checkpoint, nothing written to disk: an 8B model is filled in place on
the GPU in about a second) and fills every parameter with seeded random values, never zeros,
so the matmuls, norms and attention do the same work, at the same speed, as with real weights.
Projections and embeddings get N(0, std) (std 0.02, the usual initializer range), norm
weights N(1, 0.02), biases N(0, 0.02).

Engines reach it through the config: EngineConfig(model=a directory with config.json,
load_format="random") -> models.loader.load_model -> here. The benchmarks' named
configurations (Qwen3-0.6B, Llama-3.1-8B, ...) are such directories (bench.configs.config_dir).
Imports: torch, config, cormorant.layers, this package's registry.
"""
from __future__ import annotations

import torch
from torch import nn

from cormorant.config import ModelConfig
from cormorant.layers.attention import AttentionBackend, TorchAttention
from cormorant.models.registry import build_model


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
    for name, param in model.named_parameters():  # tied parameters appear once
        if name.endswith("bias"):
            param.normal_(0.0, 0.02, generator=generator)
        elif "norm" in name:
            param.normal_(1.0, 0.02, generator=generator)
        else:
            param.normal_(0.0, std, generator=generator)
    return model
