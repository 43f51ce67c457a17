"""Rotary position embeddings (NeoX / Hugging Face "rotate half" layout) and their scalings.

Supported `rope_scaling` types: default (None), "linear", "llama3" (Llama 3.1+), and
"freq_factors" (per-frequency divisors stored by llama.cpp in a GGUF's rope_freqs tensor).
On CUDA tensors (with Triton installed) the rotation runs cormorant.kernels.rotary, in place,
one launch for q and k; the PyTorch code here is the CPU path and the reference.
Imports: torch, cormorant.kernels (lazily).
"""
from __future__ import annotations

import math
from types import ModuleType

import torch
from torch import nn

from cormorant.kernels import load as load_kernels

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "freq_factors")


def rope_type_of(scaling: dict | None) -> str:
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))


def compute_inv_freq(head_dim: int, base: float, scaling: dict | None,
                     device: torch.device | None = None) -> torch.Tensor:
    """The [head_dim // 2] float32 inverse frequencies, scaled; formulas as in transformers."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float()
    inv_freq = 1.0 / (base ** (exponents / head_dim))  # [head_dim // 2]
    rope_type = rope_type_of(scaling)
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    if rope_type == "freq_factors":
        factors = torch.tensor(scaling["factors"], dtype=torch.float32, device=device)
        return inv_freq / factors
    raise ValueError(f"unsupported rope scaling type {rope_type!r}; "
                     f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band
    between them interpolated smoothly."""
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotary_kernels(x: torch.Tensor) -> ModuleType | None:
    """The dispatch rule, in one place: the kernel for CUDA tensors, else None (reference)."""
    return load_kernels("rotary") if x.is_cuda else None


class RotaryEmbedding(nn.Module):
    """Rotates q and k by their positions. One instance per model, shared by its layers.

    cos_sin_cache [max_position, head_dim] float32 holds cos(pos * inv_freq) in its first half
    and sin in its second (vLLM's layout, which cormorant.kernels.rotary also reads), so a
    fused kernel can replace `forward` without changing the cache or the callers."""

    def __init__(self, head_dim: int, max_position: int, base: float,
                 scaling: dict | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        self.base = base
        self.scaling = scaling
        compute_inv_freq(head_dim, base, scaling, device="cpu")  # fail early on a bad type
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)compute the cache on the module's device. Models are built on the meta device
        and materialised empty (models.registry), which calls this again."""
        device = (self.cos_sin_cache.device if hasattr(self, "cos_sin_cache")
                  else torch.empty(0).device)  # the default device (meta while building)
        if device.type == "meta":  # only the shape matters; meta math would load torch._dynamo
            cache = torch.empty(self.max_position, self.head_dim, device=device)
        else:
            inv_freq = compute_inv_freq(self.head_dim, self.base, self.scaling, device)
            positions = torch.arange(self.max_position, dtype=torch.float32, device=device)
            freqs = positions[:, None] * inv_freq[None, :]  # [max_position, head_dim // 2]
            cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)  # [max_position, head_dim]
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, H, D], k [T, Hkv, D] rotated at positions [T]. The kernel path rotates q and k
        in place (they are fresh slices of this layer's qkv projection) and returns them; the
        reference path returns new tensors."""
        kernels = rotary_kernels(q)
        if kernels is not None and q.stride(-1) == 1 and k.stride(-1) == 1:
            kernels.rotary_embedding(positions, q, k, self.cos_sin_cache)
            return q, k
        return self.rotate(q, k, *self.cos_sin(positions, q.dtype))

    def rotate(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference path's rotation of q and k by `cos_sin(positions)` (new tensors)."""
        qk = _joint(q, k)
        if qk is None:
            return _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = _rotate(qk, cos, sin)  # q's and k's heads in one go (one qkv projection's)
        return out.split((q.shape[1], k.shape[1]), dim=1)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos [T, 1, 1, D/2] and (-sin, sin) [T, 1, 2, D/2] at positions, rounded to the
        activation dtype before the multiply, as transformers does."""
        cos_sin = self.cos_sin_cache[positions]  # [T, D]: cos half, sin half
        if cos_sin.dtype != dtype:
            cos_sin = cos_sin.to(dtype)
        cos, sin = cos_sin[:, None, None].chunk(2, dim=-1)
        return cos, torch.cat((-sin, sin), dim=2)


def _joint(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """q [T, H, D] and k [T, Hkv, D] as one [T, H + Hkv, D] view when k's heads follow q's in
    memory (slices of one qkv projection's rows), else None."""
    tokens, heads, head_dim = q.shape
    row = q.stride(0) if tokens > 1 else (heads + k.shape[1]) * head_dim  # any, for one row
    if (torch.compiler.is_compiling() or q.dtype != k.dtype or q.stride(2) != 1
            or k.stride(2) != 1 or q.stride(1) != head_dim or k.stride(1) != head_dim
            or (tokens > 1 and (k.stride(0) != row or row < (heads + k.shape[1]) * head_dim))
            or k.data_ptr() != q.data_ptr() + heads * head_dim * q.element_size()
            or k.untyped_storage().data_ptr() != q.untyped_storage().data_ptr()):
        return None
    return q.as_strided((tokens, heads + k.shape[1], head_dim), (row, head_dim, 1))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, N, D] rotated ("rotate half"): x * cos + cat(-x2, x1) * sin, computed per half
    as [x1, x2] * cos + [x2, x1] * (-sin, sin): the same products and sums, bit for bit,
    without building the full-width cos, sin and rotated copies."""
    halves = x.unflatten(-1, (2, -1))  # [T, N, 2, D/2]
    out = halves * cos
    out += halves.flip(2) * sin
    return out.flatten(-2)
