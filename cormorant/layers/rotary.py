"""Rotary position embeddings (NeoX / Hugging Face "rotate half" layout) and their scalings.

Supported `rope_scaling` types: default (None), "linear", "llama3" (Llama 3.1+), and
"freq_factors" (per-frequency divisors stored by llama.cpp in a GGUF's rope_freqs tensor).
cos/sin are computed once per forward from the positions rather than looked up in a
[max_positions, head_dim] cache: it costs a few element-wise ops on [num_tokens, head_dim]
and needs no cap on positions. Imports: torch only.
"""
from __future__ import annotations

import math

import torch
from torch import nn

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


class RotaryEmbedding(nn.Module):
    """Turns positions into (cos, sin); one instance per model, shared by its layers."""

    def __init__(self, head_dim: int, base: float, scaling: dict | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.scaling = scaling
        compute_inv_freq(head_dim, base, scaling, device="cpu")  # fail early on a bad type
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)compute inv_freq in float32 on the module's device. Models are built on the
        meta device and materialised empty (models.registry), which calls this again."""
        device = self.inv_freq.device if hasattr(self, "inv_freq") else None
        inv_freq = compute_inv_freq(self.head_dim, self.base, self.scaling, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [num_tokens] -> cos, sin [num_tokens, head_dim] in `dtype`."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, head_dim // 2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, head_dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [num_tokens, num_heads, head_dim] by cos/sin [num_tokens, head_dim]."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
