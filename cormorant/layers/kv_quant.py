"""FP8 KV cache: the cache dtypes, the per-layer k/v scales and the PyTorch quantize/dequantize.

`--kv-cache-dtype fp8` stores keys and values as float8_e4m3fn: x / scale, clamped to the e4m3
range (+-448), then cast on write; fp8 * scale in fp32 on read. Each attention layer owns a
KVScales module (two fp32 scalars, 1.0 unless the checkpoint brings k_scale/v_scale,
models.weights); the backends receive it with every call and read it as tensors, so a CUDA
graph captured once replays with the loaded values. With any other cache dtype the scales are
ignored and nothing on the path changes. Imports: torch.
"""
from __future__ import annotations

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")


def kv_cache_torch_dtype(cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The KV cache's element type for the setting `cache_dtype` (CacheConfig.cache_dtype)."""
    if cache_dtype == "auto":
        return model_dtype
    if cache_dtype in ("fp8", "fp8_e4m3"):
        return FP8_DTYPE
    raise ValueError(f"unknown KV cache dtype {cache_dtype!r}; supported: "
                     f"{', '.join(KV_CACHE_DTYPES)}")


def is_fp8(cache: torch.Tensor) -> bool:
    return cache.dtype == FP8_DTYPE


class KVScales(nn.Module):
    """One attention layer's KV-cache scales: k_scale and v_scale, fp32 scalars (buffers, so
    they follow the model's device and stay fp32 whatever the weights' dtype)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("k_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("v_scale", torch.ones((), dtype=torch.float32))

    def init_buffers(self) -> None:
        """1.0: the scales of a checkpoint that brings none (models.registry calls this)."""
        with torch.no_grad():
            self.k_scale.fill_(1.0)
            self.v_scale.fill_(1.0)

    def load_scale(self, which: str, tensor: torch.Tensor) -> None:
        """Set k_scale or v_scale from a checkpoint tensor: one positive finite value."""
        if tensor.numel() != 1:
            raise ValueError(f"KV-cache {which} must be one value per layer (per-tensor); got "
                             f"shape {tuple(tensor.shape)}")
        value = float(tensor.float().reshape(()))
        if not (value > 0.0 and value < float("inf")):
            raise ValueError(f"KV-cache {which} must be positive and finite, got {value}")
        with torch.no_grad():
            getattr(self, which).fill_(value)


def quantize_kv(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale in fp32, clamped to +-448 and cast to float8_e4m3fn (round to nearest)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def read_kv(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Cache contents in `dtype`: fp8 is dequantized (fp32 * scale); other dtypes are cast."""
    if x.dtype == dtype:
        return x
    if x.dtype != FP8_DTYPE:
        return x.to(dtype)
    if scale is None:
        raise ValueError("an fp8 KV cache needs its layer's KVScales")
    return (x.float() * scale).to(dtype)
