"""GGUF weight blocks kept as they are in the file, and their exact unpacking to int4 codes.

A BlockTensor is one GGUF tensor's raw bytes, [rows, bytes per row] (rows in PyTorch's order),
handed by the GGUF loader to a linear layer's method instead of a dequantized float tensor.
Row slices (q/k/v and gate/up shards, tensor-parallel chunks) are taken on the raw rows.

`unpack_int4` turns the 4-bit block formats into (codes, scale, offset) per group of 32 with
w = scale * code + offset, exactly as llama.cpp dequantizes them (ggml-quants.c):
  Q4_0 (18 B / 32): d, 16 B of nibbles;               w = d * (q - 8)
  Q4_1 (20 B / 32): d, m, 16 B of nibbles;            w = d * q + m
  Q4_K (144 B / 256): d, dmin, 12 B of 6-bit scales and mins for 8 groups of 32, 128 B of
                      nibbles;                        w = d * sc_j * q - dmin * m_j
Every other type is dequantized with gguf.quants (the reference the tests compare against).
Imports: torch, numpy, gguf.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

GROUP = 32  # elements per int4 group (every 4-bit GGUF format groups by 32)
INT4_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q4_K)


@dataclass(frozen=True)
class BlockTensor:
    """One GGUF tensor's blocks: raw [rows, row_bytes] uint8 for a [rows, cols] weight."""

    qtype: Q
    raw: torch.Tensor  # [rows, row_bytes] uint8
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.raw.shape[0], self.cols)

    def rows(self, start: int, size: int) -> BlockTensor:
        return BlockTensor(self.qtype, self.raw.narrow(0, start, size), self.cols)

    def chunk(self, n: int, dim: int) -> list[BlockTensor]:
        """Tensor-parallel shards: rows split like torch.chunk; a column split must fall on
        block boundaries, so it is done on the dequantized tensor by the caller."""
        if dim != 0:
            raise ValueError("GGUF blocks split along rows only")
        size = self.raw.shape[0] // n
        return [self.rows(i * size, size) for i in range(n)]

    def dequantize(self) -> torch.Tensor:
        """[rows, cols] float32, through gguf.quants (llama.cpp's reference dequantization)."""
        array = dequantize(self.raw.numpy(), self.qtype)
        return torch.from_numpy(np.ascontiguousarray(array)).reshape(self.shape)


def _f16(raw: torch.Tensor, offset: int) -> torch.Tensor:
    """The little-endian float16 at byte `offset` of each block, as float32: [...]."""
    return raw[..., offset:offset + 2].contiguous().view(torch.float16)[..., 0].float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[..., 16 * n] packed bytes of n 32-element runs -> [..., 32 * n] codes: each run of 16
    bytes holds elements 0..15 in its low nibbles and 16..31 in its high ones."""
    runs = qs.unflatten(-1, (-1, 16))  # [..., n, 16]
    return torch.cat([runs & 0xF, runs >> 4], dim=-1).flatten(-2)  # [..., 32 * n]


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins (get_scale_min_k4)."""
    s = s.int()
    lo_sc, lo_m = s[..., 0:4] & 63, s[..., 4:8] & 63
    hi_sc = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    hi_m = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return torch.cat([lo_sc, hi_sc], -1).float(), torch.cat([lo_m, hi_m], -1).float()


def unpack_int4(t: BlockTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes [rows, cols] uint8 in 0..15, scale [rows, cols/32], offset [rows, cols/32])
    with w = scale * code + offset per group of 32; exact for INT4_TYPES."""
    rows = t.raw.shape[0]
    if t.qtype in (Q.Q4_0, Q.Q4_1):
        head = 2 if t.qtype == Q.Q4_0 else 4
        blocks = t.raw.view(rows, -1, head + 16)  # [rows, groups, bytes]
        d = _f16(blocks, 0)
        m = -8 * d if t.qtype == Q.Q4_0 else _f16(blocks, 2)
        codes = _nibbles(blocks[..., head:]).reshape(rows, t.cols)
        return codes, d, m
    if t.qtype == Q.Q4_K:
        blocks = t.raw.view(rows, -1, 144)  # [rows, superblocks, 144]
        d, dmin = _f16(blocks, 0), _f16(blocks, 2)
        sc, mins = _k_scales(blocks[..., 4:16])  # [rows, superblocks, 8] each
        # 64-element chunks: 32 bytes each, low nibbles first (group 2j), then high (2j + 1).
        qs = blocks[..., 16:].unflatten(-1, (4, 32))  # [rows, superblocks, 4, 32]
        codes = torch.stack([qs & 0xF, qs >> 4], dim=-2).reshape(rows, t.cols)
        scale = (d[..., None] * sc).flatten(1)  # [rows, groups]
        offset = -(dmin[..., None] * mins).flatten(1)
        return codes, scale, offset
    raise ValueError(f"{t.qtype.name} is not a 4-bit block format")
