"""Int4/int8 codes packed in int32 words: the checkpoint orders (sequential, AWQ's) and the runtime layout.

Every int checkpoint format keeps B-bit codes (B = 4 or 8) in int32 words, 32 / B per word,
lowest bits first, along one dim; AWQ additionally permutes the eight codes of a word
(AWQ_ORDER: code i of a word holds column AWQ_ORDER[i] of its eight). `unpack` and `pack`
convert between [.., n * P] codes (int32, values 0 .. 2^B - 1) and [.., n] words along a dim.

The runtime layout (kernels.int_gemm): qweight int32 [K / P, N] packed along K, scales and
zeros [K / group, N] (zeros None when symmetric); `dequantize` turns it back into fp32 W [K, N] (the CPU path and
the tests' reference).
Imports: torch.
"""
from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's GEMM pack order of the 8 codes in a word
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # its inverse permutation


def unpack(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words -> int32 codes 0 .. 2^bits - 1, `32 // bits` per word along `dim`."""
    pack = 32 // bits
    moved = words.movedim(dim, -1)
    shifts = torch.arange(pack, device=words.device, dtype=torch.int32) * bits
    codes = (moved[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*moved.shape[:-1], -1).movedim(-1, dim)


def pack(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int codes 0 .. 2^bits - 1 -> int32 words along `dim` (the inverse of unpack)."""
    pack_n = 32 // bits
    moved = codes.to(torch.int64).movedim(dim, -1)
    if moved.shape[-1] % pack_n:
        raise ValueError(f"{moved.shape[-1]} codes do not fill whole {bits}-bit words")
    grouped = moved.reshape(*moved.shape[:-1], -1, pack_n)
    shifts = torch.arange(pack_n, device=codes.device, dtype=torch.int64) * bits
    words = (grouped << shifts).sum(-1)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words)  # as signed int32
    return words.to(torch.int32).movedim(-1, dim).contiguous()


def awq_unorder(codes: torch.Tensor) -> torch.Tensor:
    """Codes unpacked from AWQ words along the last dim -> columns in their natural order."""
    order = torch.tensor(AWQ_REVERSE_ORDER, device=codes.device)
    grouped = codes.reshape(*codes.shape[:-1], -1, 8)
    return grouped.index_select(-1, order).reshape(codes.shape)


def awq_order(codes: torch.Tensor) -> torch.Tensor:
    """Natural column order -> AWQ's order along the last dim (before `pack`)."""
    order = torch.tensor(AWQ_ORDER, device=codes.device)
    grouped = codes.reshape(*codes.shape[:-1], -1, 8)
    return grouped.index_select(-1, order).reshape(codes.shape)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               bits: int, group: int) -> torch.Tensor:
    """The runtime layout -> fp32 W [K, N]: (code - zero) * scale, group by group (zeros None:
    symmetric, every zero 2^(bits-1))."""
    pack_n = 32 // bits
    shifts = torch.arange(pack_n, device=qweight.device, dtype=torch.int32) * bits
    codes = (qweight[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)  # [K/P, P, N]
    k, n = qweight.shape[0] * pack_n, qweight.shape[1]
    grouped = codes.reshape(k // group, group, n).float()
    zero = 2 ** (bits - 1) if zeros is None else zeros.float()[:, None, :]
    return ((grouped - zero) * scales.float()[:, None, :]).reshape(k, n)
