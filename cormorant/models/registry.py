"""Architecture name (config.json "architectures"[0]) -> model class, and model construction.

Decoders go through build_model; encoders (BERT family) through build_encoder.
Imports: torch, config, cormorant.layers, the model modules of this package.
"""
from __future__ import annotations

import torch
from torch import nn

from cormorant.config import ModelConfig
from cormorant.layers.attention import AttentionBackend
from cormorant.models.bert import BertForSequenceClassification, BertModel, EncoderConfig
from cormorant.models.llama import LlamaForCausalLM
from cormorant.models.qwen import Qwen2ForCausalLM, Qwen3ForCausalLM

# Mistral is the Llama decoder; its sliding window (Mistral 7B v0.1) is not applied, which
# is exact for contexts up to the window (4096 tokens).
_MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}

# Encoder models (embeddings, classification heads): no KV cache and no runner; served by
# frontend.embedder, built by build_encoder.
_ENCODER_CLASSES: dict[str, type[nn.Module]] = {
    "BertModel": BertModel,
    "BertForSequenceClassification": BertForSequenceClassification,
}


def supported_architectures() -> list[str]:
    return sorted(_MODEL_CLASSES)


def get_model_class(architecture: str) -> type[nn.Module]:
    try:
        return _MODEL_CLASSES[architecture]
    except KeyError:
        raise ValueError(f"unsupported model architecture {architecture!r}; supported: "
                         f"{', '.join(supported_architectures())}") from None


def is_encoder_architecture(architecture: str) -> bool:
    return architecture in _ENCODER_CLASSES


def build_encoder(config: EncoderConfig, dtype: torch.dtype, device: torch.device | str
                  ) -> nn.Module:
    """An encoder model with uninitialised weights (see build_model), in eval mode."""
    if config.architecture not in _ENCODER_CLASSES:
        raise ValueError(f"unsupported encoder architecture {config.architecture!r}; "
                         f"supported: {', '.join(sorted(_ENCODER_CLASSES))}")
    with torch.device("meta"):
        model = _ENCODER_CLASSES[config.architecture](config)
    _materialize(model, dtype, torch.device(device))
    return model.eval()


def build_model(model_config: ModelConfig, attn_backend: AttentionBackend,
                dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """The model with uninitialised weights in `dtype` on `device`, in eval mode; the loader
    fills every parameter. Built on the meta device first, so no memory is spent on
    random initialisation and each parameter is allocated once, directly in `dtype`."""
    model_cls = get_model_class(model_config.architecture)
    with torch.device("meta"):
        model = model_cls(model_config, attn_backend)
    _materialize(model, dtype, torch.device(device))
    return model.eval()


def _materialize(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Replace meta parameters with empty ones. Unlike Module.to_empty this keeps tied
    parameters tied (one new tensor per original parameter object). Buffers keep their
    dtype (rope frequencies stay float32) and are recomputed by their module's init_buffers."""
    new_params: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if id(param) not in new_params:
                empty = torch.empty(param.shape, dtype=dtype, device=device)
                new_params[id(param)] = nn.Parameter(empty, requires_grad=False)
            setattr(module, name, new_params[id(param)])
        for name, buf in list(module.named_buffers(recurse=False)):
            # not empty_like: on a meta tensor it imports sympy (seconds per process)
            module._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype, device=device)
        if hasattr(module, "init_buffers"):
            module.init_buffers()
