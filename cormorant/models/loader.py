"""The one way in: load_model(path, dtype, device, attn_backend) -> (model, ModelConfig).

`path` is a Hugging Face directory (config.json + *.safetensors) or a .gguf file.
`load_format` (EngineConfig.load_format) picks where the weights come from: "auto" reads the
checkpoint's; "random" reads only the architecture (config.json or the GGUF metadata) and
fills the model with seeded random weights (models.random_init), so a directory holding
nothing but config.json is enough (benchmarks, tests).
`quantization` (EngineConfig.quantization) says what becomes of a quantized GGUF: "none"
dequantizes every weight into the model dtype (the reference); "gguf" keeps the linear
layers' weights in their blocks on the CPU (layers.gguf_linear: int4 for Q4_0/Q4_1/Q4_K,
int8 for the rest), chosen per layer from the file's tensor types: about twice the decode
speed, but activations meet those kernels in bf16, so greedy output may leave the reference's
(SmolLM2, 8 chat prompts x 64 tokens: 4 identical); "auto" is "none", exactness first.
A Hugging Face checkpoint whose config.json has a `quantization_config` loads in that format,
and `quantization` may also name a format to quantize dense weights into at load (random
weights too, for the benchmarks): models.quantization decides both.
resolve_device and resolve_dtype are the one place where "auto" becomes a device and a dtype
(the engine builder, the benchmarks and the embedder call them too).
load_model_config(path) reads only the architecture facts (no weights) so the caller can
size the KV cache and scheduler before paying for the weights. load_encoder(path, dtype,
device) -> (model, EncoderConfig) is the same for encoder models (BERT family, safetensors).
Imports: torch, config, cormorant.layers, this package's loaders and registry.
"""
from __future__ import annotations

import logging
import os
import time

import torch
from torch import nn

from cormorant.config import ModelConfig
from cormorant.layers.attention import AttentionBackend, TorchAttention
from cormorant.layers.linear import apply_linear_methods, finalize_linear_methods
from cormorant.models import gguf_loader, gguf_quantized, hf_loader
from cormorant.models import quantization as quantization_mod
from cormorant.models.bert import EncoderConfig, encoder_config_from_hf
from cormorant.models.random_init import build_random_model
from cormorant.models.registry import build_encoder, build_model, get_model_class
from cormorant.models.weights import load_weights

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

LOAD_FORMATS = ("auto", "random")
QUANTIZATIONS = ("auto", "none", "gguf")


def check_load_format(load_format: str) -> str:
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; use one of "
                         f"{', '.join(LOAD_FORMATS)}")
    return load_format


def is_gguf(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".gguf")


def load_model_config(path: str) -> ModelConfig:
    """Architecture facts only; raises ValueError for unsupported models before any weight
    is read."""
    if is_gguf(path):
        config = gguf_loader.gguf_model_config(gguf_loader.open_gguf(path))
    elif os.path.isfile(os.path.join(path, "config.json")):
        config = hf_loader.hf_model_config(path)
    else:
        raise ValueError(f"{path!r} is neither a .gguf file nor a directory with config.json")
    get_model_class(config.architecture)
    return config


def resolve_device(device: torch.device | str) -> torch.device:
    """"auto": the GPU when there is one, else the CPU. Asking for CUDA without one fails."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but no CUDA device is available")
    return device


def resolve_dtype(dtype: torch.dtype | str, path: str | None, device: torch.device
                  ) -> torch.dtype:
    """An explicit dtype wins. "auto": float32 on the CPU (most CPUs lack fast half-precision
    matmuls, and references are compared in float32); on GPUs the half dtype the checkpoint at
    `path` was saved in, else bfloat16 (GGUF, float32 checkpoints, no path) where the GPU
    supports it, else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use auto or one of {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    saved = None
    if path is not None and os.path.isfile(os.path.join(path, "config.json")):
        saved = hf_loader.checkpoint_dtype(path)
    return saved if saved in (torch.float16, half) else half


def load_model(path: str, dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu",
               attn_backend: AttentionBackend | None = None, *, load_format: str = "auto",
               seed: int = 0, quantization: str = "none") -> tuple[nn.Module, ModelConfig]:
    """Build the model for `path` and fill its weights; returns (model in eval mode, config).
    load_format "random": weights drawn from `seed` instead of read (same seed, same weights).
    quantization: see the module docstring (the engine's default is "auto")."""
    check_load_format(load_format)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, path, device)
    attn_backend = attn_backend or TorchAttention()
    if load_format == "random":
        config = load_model_config(path)
        model = build_random_model(config, dtype, device, seed, attn_backend=attn_backend)
        if (scheme := quantization_plan(None, quantization, device)) is not None:
            quantization_mod.quantize_dense(model, scheme)
            _release_freed_heap()
        return model, config
    keep_blocks = False
    if is_gguf(path):
        reader = gguf_loader.open_gguf(path)  # opened once: parsing the metadata is not free
        config = gguf_loader.gguf_model_config(reader)
        model = build_model(config, attn_backend, dtype, device)
        keep_blocks = resolve_quantization(quantization, device) == "gguf"
        if keep_blocks:
            apply_linear_methods(model, gguf_quantized.gguf_chooser(reader, model))
        weights = gguf_loader.iter_gguf_tensors(reader, config, keep_blocks)
    else:
        config = load_model_config(path)
        model = build_model(config, attn_backend, dtype, device)
        scheme = quantization_plan(hf_loader.quantization_config(path), quantization, device)
        if scheme is not None:
            apply_linear_methods(model, scheme.chooser(model))
        weights = hf_loader.iter_safetensors(path)
    start = time.perf_counter()
    with torch.no_grad():
        load_weights(model, weights)
        finalize_linear_methods(model)
        if keep_blocks:
            gguf_quantized.rescore_lm_head(model)
    _release_freed_heap()
    if keep_blocks:
        log.info("GGUF weights kept quantized (%s); read and repacked in %.1f s",
                 gguf_quantized.describe(model), time.perf_counter() - start)
    return model, config


def _release_freed_heap() -> None:
    """Hand the loader's freed temporaries (dequantized float copies, unpacked codes) back to
    the OS: glibc keeps freed heap pages resident until malloc_trim. Elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def quantization_plan(quant_config: dict | None, quantization: str, device: torch.device
                      ) -> quantization_mod.QuantScheme | None:
    """The weight format of a Hugging Face checkpoint (or random weights): None for dense."""
    if quantization == "gguf":
        raise ValueError("quantization 'gguf' applies to GGUF files only")
    return quantization_mod.plan(quant_config, quantization)


def resolve_quantization(quantization: str, device: torch.device) -> str:
    """For a GGUF file: "auto" -> "none": the default is the exact path (token-identical to
    transformers); "gguf" is asked for by name and needs torch's int4 CPU kernel."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r} does not apply to GGUF files; use "
                         f"one of {', '.join(QUANTIZATIONS)}")
    if quantization == "gguf" and device.type != "cpu":
        raise ValueError("quantization 'gguf' runs on the CPU only")
    if quantization == "gguf" and not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        raise ValueError("quantization 'gguf' needs torch's int4 CPU kernel "
                         "(_weight_int4pack_mm_for_cpu), which this torch build lacks")
    return "none" if quantization == "auto" else quantization


def load_encoder(path: str, dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu"
                 ) -> tuple[nn.Module, EncoderConfig]:
    """An encoder model directory (config.json + *.safetensors) -> (model in eval mode,
    EncoderConfig). "auto" dtype: float32 on every device (encoders are small, and
    embeddings are compared by cosine distances that half precision blurs)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} is not a directory with config.json")
    device = resolve_device(device)
    dtype = torch.float32 if dtype == "auto" else resolve_dtype(dtype, path, device)
    config = encoder_config_from_hf(hf_loader.read_json(os.path.join(path, "config.json")))
    model = build_encoder(config, dtype, device)
    with torch.no_grad():
        load_weights(model, hf_loader.iter_safetensors(path))
    return model, config
