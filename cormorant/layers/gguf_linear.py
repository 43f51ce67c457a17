"""CPU linear methods over GGUF weights kept quantized: int4 and int8 weight-packed matmuls.

Both run on torch's own CPU kernels (ATen, vectorised for AVX2/AVX-512, measured here on a
2-core Xeon with AVX-512 and AMX: a [1536, 576] projection of one row takes ~35 us in int4,
~40 us in int8, ~75 us dense bf16 and ~160 us dense fp32). The kernels take bf16 activations
(in fp32 they are ~10x slower) and return bf16, so x is cast to bf16 for the matmul and the
result back to the model's dtype: norms, attention and the residual stream keep the model's
precision. Not token-identical to a dequantized fp32 model: within a tolerance (tests).

- Int4CpuMethod: Q4_0, Q4_1, Q4_K. The 4-bit codes are kept exactly (layers.gguf_blocks), in
  groups of 32 with a bf16 scale and zero each: w = (code - 8) * scale + zero
  (`_weight_int4pack_mm_for_cpu`). Only the scales and zeros are rounded (fp16 -> bf16).
- Int4PairCpuMethod: every other type (Q8_0, Q6_K, Q5_*, ...), requantized at load to two
  int4 terms per group of 32 (the second quantizes the first's error), run as one int4
  matmul of [x | x]: 8 bits a weight, precision near an 8-bit block format (not exact). It
  beat int8 with one scale per row (`_weight_int8pack_mm`, whose row maximum sets the step)
  by 2x in matmul error on SmolLM2's Q8_0 embedding.
F32/F16/BF16 weights stay on the dense method. `gguf_method_for(types)` picks the method of a
layer from the GGUF types of its parts (a fused projection whose parts differ gets the pair).

Many rows (prefill chunks): the int4 kernel costs like a GEMV per 4 rows (it unpacks the
weight again for each tile of 4), so a call of at least DENSE_MIN_ROWS rows dequantizes the
weight into a temporary bf16 W^T (`dequantize_t`: the kernel's own (code - 8) * scale + zero
in float32, rounded once to bf16; no resident copy, and a large layer's goes in slabs of at
most DENSE_SLAB_BYTES of float32) and runs a dense matmul (oneDNN). CPU
time on the shared 2-core Xeon, 1 thread, SmolLM2-135M's shapes, int4 vs dequantize + dense
(2026-12-06, load ~1): qkv 576->960 at 32 / 64 / 128 / 512 rows 0.78 / 1.52 / 2.80 / 11.1 ms
vs 1.49 / 1.39 / 1.68 / 3.07 ms; gate_up 576->3072 2.39 / 4.70 / 8.91 / 40.9 vs 4.08 / 4.17 /
5.06 / 8.29; down 1536->576 1.74 / 3.05 / 6.05 / 24.3 vs 2.35 / 3.28 / 4.58 / 4.80; o
576->576 0.42 / 0.84 / 1.82 / 6.66 vs 0.96 / 0.93 / 0.84 / 2.13. The dequantization alone
is most of the dense side at these sizes (1.0 ms for qkv, 3.0 for gate_up, 1.7 for down:
~1.2-1.9 ns a weight in ATen's elementwise ops). In the whole model (one prompt's prefill,
all layers forced one way): 48 / 64 / 96 / 128 / 256 tokens 210 / 297 / 440 / 601 / 1122 ms
on int4 vs 243 / 309 / 367 / 376 / 611 ms dense, so the threshold is 80 rows; decode batches
(1-16 rows) stay on the int4 kernel, as does every call inside a compiled graph. The packed
layout follows the CPU's vector width (`Int4Layout`); `finalize` reads its codes back and
keeps the dense path only for a layout that reproduces them exactly. Where the compiled CPU op
is built (kernels.cpu_decode: AVX512_BF16, the AVX-512 layout) it dequantizes instead
(`dense_weight_bf16`: the same bf16 values, 0.155 ms for gate_up against 2.5 ms, 2 threads):
the prefill of b5's 16 prompts of 128 tokens went from 2.65 to 2.04 s (2026-12-06, 2 threads).

Parameters are filled row slice by row slice through `load_rows` (a BlockTensor or a float
tensor) into load-time buffers, then `finalize` packs them for the kernel and frees them.
Imports: torch, gguf, cormorant.layers (linear, gguf_blocks), cormorant.kernels (cpu_decode).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from gguf import GGMLQuantizationType as Q
from torch import nn

from cormorant.kernels.cpu_decode import int4_dequant_t
from cormorant.layers.gguf_blocks import GROUP, INT4_TYPES, BlockTensor, unpack_int4
from cormorant.layers.linear import LinearMethod

_DENSE_TYPES = (Q.F32, Q.F16, Q.BF16)
KERNEL_DTYPE = torch.bfloat16
# Rows from which a call dequantizes its weight for a dense matmul (module docstring).
DENSE_MIN_ROWS = 80
# The most float32 bytes a call's dequantized weight takes at once (Int4CpuMethod.dense_matmul).
DENSE_SLAB_BYTES = 64 << 20


@torch.library.custom_op("cormorant::int4pack_mm_cpu", mutates_args=())
def int4pack_mm_compiled(x: torch.Tensor, weight: torch.Tensor, group: int,
                         scales_zeros: torch.Tensor) -> torch.Tensor:
    """The ATen int4 matmul as an opaque op for torch.compile (runner.cpu_compile): Inductor
    would otherwise lower it to quantized.int4mm_packed_weight_cpu, measured 2x slower for a
    decode row."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, weight, group, scales_zeros)


@int4pack_mm_compiled.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, group: int, scales_zeros: torch.Tensor
      ) -> torch.Tensor:
    return x.new_empty(x.shape[0], scales_zeros.shape[1])


_INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default


def gguf_method_for(types: set[Q]) -> LinearMethod | None:
    """The method for a layer whose GGUF parts have these types; None: dense."""
    if not types or types <= set(_DENSE_TYPES):
        return None
    if types <= set(INT4_TYPES):
        return Int4CpuMethod()
    return Int4PairCpuMethod()


def as_float(loaded: torch.Tensor | BlockTensor) -> torch.Tensor:
    return loaded.dequantize() if isinstance(loaded, BlockTensor) else loaded.float()


def _matmul_input(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> [M, K] in the kernels' dtype."""
    return x.reshape(-1, x.shape[-1]).to(KERNEL_DTYPE)


class Int4Layout(NamedTuple):
    """Where `_convert_weight_to_int4pack_for_cpu` puts a code (it follows the CPU's vector
    width): output rows in blocks of `block`, each stored [in, block / 2] bytes; a byte holds
    rows j and j + block / 2 of its block (`halves`) or rows 2j and 2j + 1; a last, shorter
    block always holds adjacent pairs."""
    block: int
    halves: bool


# AVX-512, AVX2, and the scalar fallback of ATen's int4mm_kernel.cpp.
_LAYOUTS = (Int4Layout(64, True), Int4Layout(32, True), Int4Layout(32, False))
ROWS_LAYOUT = _LAYOUTS[0]  # the one the compiled op reads (csrc/int4_rows.h)


def _signed_codes_t(packed: torch.Tensor, out: torch.Tensor, layout: Int4Layout) -> None:
    """Write code - 8 of the packed [n, k / 2] bytes into out [k, n] (any dtype)."""
    k, n = out.shape
    q = (packed ^ 0x88).view(torch.int8).reshape(-1)  # each nibble: code - 8 in two's complement
    low, high = (q << 4) >> 4, q >> 4  # arithmetic shifts sign-extend the nibbles
    full, half = n // layout.block * layout.block, layout.block // 2
    if full:
        blocks = out[:, :full].view(k, full // layout.block, *(
            (2, half) if layout.halves else (half, 2)))
        for i, nibbles in enumerate((low, high)):
            src = nibbles[:full * k // 2].view(-1, k, half).transpose(0, 1)  # [k, blocks, half]
            (blocks[:, :, i] if layout.halves else blocks[..., i]).copy_(src)
    if n > full:  # the last, shorter block: adjacent pairs
        tail = out[:, full:].view(k, -1, 2)
        tail[..., 0].copy_(low[full * k // 2:].view(k, -1))
        tail[..., 1].copy_(high[full * k // 2:].view(k, -1))


def dequantize_t(packed: torch.Tensor, scales_zeros: torch.Tensor, layout: Int4Layout
                 ) -> torch.Tensor:
    """W^T [k, n] in float32 from the kernel's operands: (code - 8) * scale + zero per group
    of 32, the kernel's own arithmetic (float32 of the bf16 scales and zeros)."""
    groups, n, _ = scales_zeros.shape
    w_t = torch.empty(groups * GROUP, n)
    _signed_codes_t(packed, w_t, layout)
    scale, zero = (scales_zeros[..., i].float()[:, None] for i in (0, 1))  # [groups, 1, n]
    grouped = w_t.view(groups, GROUP, n)
    torch.addcmul(zero, grouped, scale, out=grouped)
    return w_t


def find_layout(packed: torch.Tensor, n: int, k: int, codes: torch.Tensor
                ) -> Int4Layout | None:
    """The layout in which `packed` holds codes [n, k] (0..15), None if no known one does."""
    signed = (codes - 8).t()
    for layout in _LAYOUTS:
        read = torch.empty(k, n, dtype=torch.int8)
        _signed_codes_t(packed, read, layout)
        if torch.equal(read, signed.to(torch.int8)):
            return layout
    return None


class Int4CpuMethod(LinearMethod):
    """4-bit codes in groups of 32 with bf16 scales and zeros (exact for Q4_0/Q4_1/Q4_K).
    Calls of at least `dense_min_rows` rows (None: never) dequantize the weight to a
    temporary bf16 matrix and run a dense matmul (see the module docstring)."""

    def __init__(self, dense_min_rows: int | None = DENSE_MIN_ROWS) -> None:
        self.dense_min_rows = dense_min_rows

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int) -> None:
        if input_size % GROUP:
            raise ValueError(f"int4 groups of {GROUP} do not divide {input_size} inputs")
        # Load-time buffers, [out, in] codes and [out, groups] scale/offset; packed by finalize.
        layer.weight = nn.Parameter(torch.empty(output_size, input_size, dtype=torch.uint8),
                                    requires_grad=False)
        groups = input_size // GROUP
        layer.w_scale = torch.empty(output_size, groups)
        layer.w_offset = torch.empty(output_size, groups)

    def load_rows(self, layer: nn.Module, loaded: torch.Tensor | BlockTensor, start: int
                  ) -> None:
        if not (isinstance(loaded, BlockTensor) and loaded.qtype in INT4_TYPES):
            raise ValueError("an int4 layer takes Q4_0/Q4_1/Q4_K blocks, got "
                             f"{getattr(loaded, 'qtype', 'a float tensor')}")
        codes, scale, offset = unpack_int4(loaded)
        size = codes.shape[0]
        if codes.shape[1] != layer.weight.shape[1] or start + size > layer.weight.shape[0]:
            raise ValueError(f"GGUF tensor of shape {tuple(codes.shape)} does not fit rows "
                             f"{start}:{start + size} of {tuple(layer.weight.shape)}")
        layer.weight.data[start:start + size] = codes
        layer.w_scale[start:start + size] = scale
        layer.w_offset[start:start + size] = offset

    def finalize(self, layer: nn.Module) -> None:
        codes = layer.weight.data.int()  # [out, in]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        # w = scale * code + offset = (code - 8) * scale + (offset + 8 * scale)
        zero = layer.w_offset + 8 * layer.w_scale
        scales_zeros = torch.stack([layer.w_scale.t(), zero.t()], dim=-1)  # [groups, out, 2]
        layer.weight = nn.Parameter(packed, requires_grad=False)
        layer.register_buffer("scales_zeros", scales_zeros.to(KERNEL_DTYPE).contiguous())
        del layer.w_scale, layer.w_offset
        # The kernel's packed layout, read back and checked against these very codes (None:
        # none of the known layouts matches, and every call stays on ATen's int4 kernel; the
        # dense path and csrc/int4_rows.h read the codes through it).
        layer.int4_layout = find_layout(packed, codes.shape[0], codes.shape[1], codes)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
              ) -> torch.Tensor:
        rows = x.to(KERNEL_DTYPE) if x.dim() == 2 else _matmul_input(x)
        if torch.compiler.is_compiling():
            y = int4pack_mm_compiled(self.kernel_input(rows), layer.weight, GROUP,
                                     layer.scales_zeros)
        elif self.runs_dense(layer, rows.shape[0]):
            y = self.dense_matmul(layer, rows)
        else:  # the decode path: kept to few Python steps (120 calls a SmolLM2 token)
            y = _INT4_MM(self.kernel_input(rows), layer.weight, GROUP, layer.scales_zeros)
        y = y.to(x.dtype)
        if x.dim() != 2:
            y = y.reshape(*x.shape[:-1], -1)
        return y if bias is None else y + bias

    def kernel_input(self, rows: torch.Tensor) -> torch.Tensor:
        """The int4 kernel's input for x [M, in]."""
        return rows

    def runs_dense(self, layer: nn.Module, rows: int) -> bool:
        """Whether a call of `rows` rows dequantizes the weight for a dense matmul."""
        return (self.dense_min_rows is not None and rows >= self.dense_min_rows
                and getattr(layer, "int4_layout", None) is not None)

    def dense_matmul(self, layer: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        """rows [M, in] @ W^T in bf16, W dequantized for this call in slabs of output columns
        of at most DENSE_SLAB_BYTES in float32 (one slab for SmolLM2's layers: slabs are
        slower, they only bound a large layer's temporary)."""
        groups, n, _ = layer.scales_zeros.shape
        block = layer.int4_layout.block
        cols = max(block, DENSE_SLAB_BYTES // (4 * groups * GROUP) // block * block)
        parts = [rows @ self.dense_weight_bf16(layer, start, min(n, start + cols))
                 for start in range(0, n, cols)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def dense_weight_bf16(self, layer: nn.Module, start: int, end: int) -> torch.Tensor:
        """W^T [in, end - start] in bf16: the compiled op's int4_dequant_t where it is built
        and the layout is its own (the same values, ~15x faster), else dense_weight_t."""
        op = int4_dequant_t()
        if op is not None and layer.int4_layout == ROWS_LAYOUT and (end - start) % 64 == 0:
            return op(layer.weight[start:end], layer.scales_zeros[:, start:end].contiguous(),
                      isinstance(self, Int4PairCpuMethod))
        return self.dense_weight_t(layer, start, end).to(KERNEL_DTYPE)

    def dense_weight_t(self, layer: nn.Module, start: int, end: int) -> torch.Tensor:
        """W^T [in, end - start] in float32 for output features start:end (dequantize_t; start
        is a multiple of the layout's block, whose bytes lie together)."""
        k = layer.scales_zeros.shape[0] * GROUP  # packed inputs: 2 * in for the pair
        packed = layer.weight.view(-1)[start * k // 2:end * k // 2]
        return dequantize_t(packed, layer.scales_zeros[:, start:end], layer.int4_layout)


def quantize_int4_groups(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [rows, cols] -> (codes uint8, scale, offset) per group of 32 (min/max, asymmetric)."""
    groups = w.unflatten(1, (-1, GROUP))  # [rows, cols / 32, 32]
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp_min(1e-12)
    codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp_(0, 15)
    return codes.to(torch.uint8).flatten(1), scale, low


class Int4PairCpuMethod(Int4CpuMethod):
    """W ~ W1 + W2 in two int4 terms (W2 quantizes W1's error), run as one int4 matmul of
    [x | x] against [W1 | W2]: 8 bits a weight like int8, but per group of 32 (an 8-bit
    type's precision), on the int4 kernel. For Q8_0, Q6_K, Q5_* (requantized, not exact)."""

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int) -> None:
        super().create_weights(layer, 2 * input_size, output_size)

    def load_rows(self, layer: nn.Module, loaded: torch.Tensor | BlockTensor, start: int
                  ) -> None:
        w = as_float(loaded)  # [rows, in]
        cols = layer.weight.shape[1] // 2
        if w.shape[1] != cols or start + w.shape[0] > layer.weight.shape[0]:
            raise ValueError(f"tensor of shape {tuple(w.shape)} does not fit rows {start}:"
                             f"{start + w.shape[0]} of {(layer.weight.shape[0], cols)}")
        codes1, scale1, low1 = quantize_int4_groups(w)
        first = (codes1.float().unflatten(1, (-1, GROUP)) * scale1[..., None]
                 + low1[..., None]).flatten(1)
        codes2, scale2, low2 = quantize_int4_groups(w - first)
        end = start + w.shape[0]
        layer.weight.data[start:end] = torch.cat([codes1, codes2], dim=1)
        layer.w_scale[start:end] = torch.cat([scale1, scale2], dim=1)
        layer.w_offset[start:end] = torch.cat([low1, low2], dim=1)

    def kernel_input(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([rows, rows], dim=-1)

    def dense_weight_t(self, layer: nn.Module, start: int, end: int) -> torch.Tensor:
        """(W1 + W2)^T [in, end - start], the two terms summed in float32."""
        both = super().dense_weight_t(layer, start, end)  # [2 * in, end - start]
        half = both.shape[0] // 2
        return both[:half].add_(both[half:])
