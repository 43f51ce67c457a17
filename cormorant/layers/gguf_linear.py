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

Parameters are filled row slice by row slice through `load_rows` (a BlockTensor or a float
tensor) into load-time buffers, then `finalize` packs them for the kernel and frees them.
Imports: torch, gguf, cormorant.layers (linear, gguf_blocks).
"""
from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as Q
from torch import nn

from cormorant.layers.gguf_blocks import GROUP, INT4_TYPES, BlockTensor, unpack_int4
from cormorant.layers.linear import LinearMethod

_DENSE_TYPES = (Q.F32, Q.F16, Q.BF16)
KERNEL_DTYPE = torch.bfloat16


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


class Int4CpuMethod(LinearMethod):
    """4-bit codes in groups of 32 with bf16 scales and zeros (exact for Q4_0/Q4_1/Q4_K)."""

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

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
              ) -> torch.Tensor:
        mm = (int4pack_mm_compiled if torch.compiler.is_compiling()
              else torch.ops.aten._weight_int4pack_mm_for_cpu)
        y = mm(_matmul_input(x), layer.weight, GROUP, layer.scales_zeros)
        y = y.to(x.dtype).reshape(*x.shape[:-1], -1)
        return y if bias is None else y + bias


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

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
              ) -> torch.Tensor:
        return super().apply(layer, torch.cat([x, x], dim=-1), bias)
