"""FP8 (e4m3) weights behind the LinearMethod seam: per-tensor, per-channel and block scales.

Fp8LinearMethod holds `weight` [out, in] float8_e4m3fn and its scales. While loading, the
scale parameter is shaped as the checkpoint stores it:
  "tensor"   one scalar per checkpoint projection, a [num_shards] param (q/k/v, gate/up);
  "channel"  [out, 1], one per output feature;
  "block"    [out / bn, in / bk] for weight_block_size [bn, bk] (quant_method "fp8" calls it
             `weight_scale_inv`: it multiplies, despite the name).
A static activation scale (`input_scale`, one scalar per projection) may come along.
`finalize` turns every layout into the kernels' one layout (kernels.fp8_gemm): `weight_scale`
fp32 [ceil(out / scale_n), ceil(in / group_k)]; per-tensor scalars of a fused layer are
expanded to per-channel (exact: no requantization), and a fused layer's static input scales
become their maximum (the conservative one: no projection's activations clip).
The online scheme (`--quantization fp8`) takes float rows in `load_rows` and quantizes them per
output channel (amax / 448).

The matmul, by where it runs:
  CPU (and any non-CUDA device)  dequantize-then-matmul in the activation dtype: the reference.
  CUDA, M <= FP8_GEMV_MAX_ROWS    kernels.fp8_gemm.fp8_gemv (reads one byte per weight), with
                                  the deferred residual-add + RMSNorm or SiLU-and-multiply
                                  folded in (offers_fused_prologue), as the dense GEMV does.
  CUDA, M <= FP8_GEMM_MAX_ROWS    kernels.fp8_gemm.fp8_gemm (W8A16 split-K tiles, bf16/fp16).
  CUDA, M <= FP8_A8_MAX_ROWS      kernels.fp8_gemm.fp8_scaled_gemm (W8A8 Triton tiles):
                                  activations quantized per token as for _scaled_mm below.
  CUDA, per-channel scales        torch._scaled_mm: activations quantized per token (or by the
                                  static input scale, kernels.fp8_quant), FP8 tensor cores,
                                  rowwise scales (sm89+); the deferred norm / SiLU folded into
                                  the quantization.
  CUDA, block scales (or no rowwise _scaled_mm)  kernels.fp8_gemm.fp8_gemm (W8A16 tiles).
Imports: torch, cormorant.layers.linear, cormorant.kernels (lazily).
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cormorant.kernels import load as load_kernels
from cormorant.layers.linear import LinearMethod, set_layout

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
# Rows up to which the FP8 GEMV runs on CUDA (benchmarks/fp8_probe.py measures the crossover).
FP8_GEMV_MAX_ROWS = 1
# Rows up to which bf16/fp16 activations stay unquantized through kernels.fp8_gemm (W8A16,
# split-K tiles, codes made bf16 by kernels.e4m3) rather than torch._scaled_mm, whose FP8
# tiles read few-row weights slowly. H100, 2026-12-07 (fp8_probe --sweep-w8a16): at 32 rows
# qkv / o / gate_up / down took 18 / 14 / 51 / 32 us against _scaled_mm's 21 / 18 / 56 / 54;
# at 64 rows (64-row tiles from 33 rows on) 30 / 21 / 71 / 56 against 20 / 18 / 52 / 52, and
# the best tiles of the sweep, transposed ones (SWAP) included, 24 / 18 / 59 / 44 (141 in all,
# as _scaled_mm). CORMORANT_FP8_GEMM_ROWS=1 turns it off.
FP8_GEMM_MAX_ROWS = int(os.environ.get("CORMORANT_FP8_GEMM_ROWS", "32"))
# Rows up to which quantized activations go through kernels.fp8_gemm.fp8_scaled_gemm (W8A8
# Triton tiles, split-K) rather than torch._scaled_mm. Off (0): on the H100 (2026-12-07
# 11:27, fp8_probe --sweep-a8, plain and transposed tiles) its best tiles took qkv / o /
# gate_up / down 42 / 37 / 80 / 67 us at 128 rows where _scaled_mm took 18 / 17 / 53 / 45,
# and 35 / 32 / 66 / 46 at 16 rows where the W8A16 tiles took 16 / 12 / 51 / 29.
# CORMORANT_FP8_A8_ROWS=512 routes rows to it, for tuning.
FP8_A8_MAX_ROWS = int(os.environ.get("CORMORANT_FP8_A8_ROWS", "0"))
# Rows that take torch._scaled_mm get the deferred residual-add + RMSNorm or SiLU-and-multiply
# folded into the activations' quantization (kernels.fp8_quant.add_rms_norm_quantize,
# silu_mul_quantize: one launch instead of two, the same codes). CORMORANT_FP8_QUANT_PROLOGUE=0
# turns it off. Inputs up to the quantizer's one-pass width (QUANT_ONE_PASS_K).
QUANT_PROLOGUE = os.environ.get("CORMORANT_FP8_QUANT_PROLOGUE", "1") != "0"
# The one-row GEMV folds the residual-add + RMSNorm / SiLU-and-multiply into its loads (every
# program re-reads the input row: about 0.27 ms of B2's 3.5 on the H100, 2026-12-06).
# CORMORANT_FP8_GEMV_PROLOGUE=0 runs them as their own kernels before the plain GEMV instead,
# as the int4 GEMV does (there the fused form measured slower); untimed for FP8, for A/B.
GEMV_PROLOGUE = os.environ.get("CORMORANT_FP8_GEMV_PROLOGUE", "1") != "0"
# Where the kernels run and for which activation dtypes (tests widen these to the CPU in fp32,
# under TRITON_INTERPRET); elsewhere the dequantize-then-matmul reference runs.
KERNEL_DEVICE_TYPES = ("cuda",)
GEMV_DTYPES = (torch.bfloat16, torch.float16)
STRATEGIES = ("tensor", "channel", "block")


def shard_sizes(layer: nn.Module) -> list[int]:
    """This rank's output features of each checkpoint projection of `layer`, in slot order
    (q/k/v, gate/up, or the one projection of an unfused layer)."""
    if hasattr(layer, "num_kv_heads") and hasattr(layer, "head_dim"):
        kv = layer.num_kv_heads * layer.head_dim
        return [layer.num_heads * layer.head_dim, kv, kv]
    if hasattr(layer, "output_sizes"):
        return [size // layer.tp_size for size in layer.output_sizes]
    return [layer._local_out()]


def _param(t: torch.Tensor, **layout: Any) -> nn.Parameter:
    return set_layout(nn.Parameter(t, requires_grad=False), **layout)


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float rows [n, in] -> (fp8 codes [n, in], fp32 scales [n, 1]): amax / 448 per row."""
    rows = rows.float()
    scale = (rows.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return (rows / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class Fp8LinearMethod(LinearMethod):
    """One layer's FP8 weight (one instance per layer: it keeps the layer's scale layout).
    strategy: "tensor", "channel" or "block" (with block = (bn, bk)); scale_name: the
    checkpoint's name of the weight scale; static_input: a per-tensor `input_scale` is loaded;
    online: float rows are quantized at load (per channel)."""

    def __init__(self, strategy: str, block: tuple[int, int] | None = None,
                 scale_name: str = "weight_scale", static_input: bool = False,
                 online: bool = False) -> None:
        if strategy not in STRATEGIES or (strategy == "block") != (block is not None):
            raise ValueError(f"FP8 weight scales {strategy!r} (block {block}) are not "
                             f"supported; supported: {', '.join(STRATEGIES)}")
        if online and strategy != "channel":
            raise ValueError("quantizing at load makes per-channel scales only")
        self.strategy, self.block, self.scale_name = strategy, block, scale_name
        self.static_input, self.online = static_input, online
        self.scale_n, self.group_k = 1, 0  # the kernels' layout, set by create_weights

    # -- loading --------------------------------------------------------------------------
    def create_weights(self, layer: nn.Module, input_size: int, output_size: int) -> None:
        layer.weight = nn.Parameter(torch.empty(output_size, input_size, dtype=FP8_DTYPE),
                                    requires_grad=False)
        num_shards = len(shard_sizes(layer))
        self.group_k = input_size
        if self.strategy == "tensor":
            scale = _param(torch.empty(num_shards), output_dim=None, input_dim=None)
        elif self.online:  # made here, not read: a buffer, so no checkpoint tensor is expected
            layer.register_buffer(self.scale_name, torch.empty(output_size, 1), persistent=False)
            scale = None
        elif self.strategy == "channel":
            scale = _param(torch.empty(output_size, 1), input_dim=None)
        else:
            scale = self._block_scale(layer, input_size, output_size)
        if scale is not None:
            setattr(layer, self.scale_name, scale)
        if self.static_input:
            layer.input_scale = _param(torch.empty(num_shards), output_dim=None,
                                       input_dim=None)

    def _block_scale(self, layer: nn.Module, input_size: int, output_size: int
                     ) -> nn.Parameter:
        bn, bk = self.block
        sizes = shard_sizes(layer)
        split = len(sizes) > 1 or layer.tp_size > 1
        if split and any(size % bn for size in sizes):
            raise ValueError(f"weight_block_size [{bn}, {bk}] does not divide the output "
                             f"features {sizes} of a fused or split layer")
        if layer.tp_size > 1 and input_size % bk:
            raise ValueError(f"weight_block_size [{bn}, {bk}] does not divide this rank's "
                             f"{input_size} input features")
        self.scale_n, self.group_k = bn, bk
        return _param(torch.empty(-(-output_size // bn), -(-input_size // bk)),
                      packed_dim=0, packed_factor=bn)

    def load_rows(self, layer: nn.Module, loaded: Any, start: int) -> None:
        """fp8 checkpoint rows are copied; float rows are quantized (online scheme only)."""
        if not isinstance(loaded, torch.Tensor):
            loaded = loaded.dequantize()
        rows = layer.weight.data.narrow(0, start, loaded.shape[0])
        if loaded.dtype == FP8_DTYPE:
            if rows.shape != loaded.shape:
                raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} does not "
                                 f"fit parameter slice of shape {tuple(rows.shape)}")
            rows.copy_(loaded)
            return
        if not self.online:
            raise ValueError(f"an FP8 checkpoint's weight must be float8_e4m3fn, not "
                             f"{loaded.dtype}")
        if rows.shape != loaded.shape:
            raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} does not fit "
                             f"parameter slice of shape {tuple(rows.shape)}")
        codes, scale = quantize_rows(loaded.to(rows.device))
        rows.copy_(codes)
        getattr(layer, self.scale_name).data.narrow(0, start, scale.shape[0]).copy_(scale)

    def load_param(self, layer: nn.Module, param: nn.Parameter, loaded: torch.Tensor,
                   start: int, shard_index: int) -> None:
        if self.strategy == "channel" and param is getattr(layer, self.scale_name) \
                and loaded.dim() == 1:
            loaded = loaded[:, None]  # [out] is the same scales as [out, 1]
        super().load_param(layer, param, loaded, start, shard_index)

    def finalize(self, layer: nn.Module) -> None:
        """The checkpoint's scale layout -> the kernels' (see the module docstring)."""
        scale = getattr(layer, self.scale_name).data.float()
        if self.strategy == "tensor":
            sizes = torch.tensor(shard_sizes(layer), device=scale.device)
            scale = scale.repeat_interleave(sizes)[:, None]
        if not (torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"FP8 {self.scale_name} holds values that are not finite and "
                             "positive")
        if self.scale_name != "weight_scale":
            delattr(layer, self.scale_name)
        layer.weight_scale = nn.Parameter(scale.contiguous(), requires_grad=False)
        if self.static_input:
            input_scale = layer.input_scale.data.float().max().reshape(1)
            if not (torch.isfinite(input_scale).all() and (input_scale > 0).all()):
                raise ValueError("FP8 input_scale holds values that are not finite and positive")
            layer.input_scale = nn.Parameter(input_scale, requires_grad=False)

    # -- the matmul -----------------------------------------------------------------------
    def dequantized(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """The weight as floats [out, in] (the reference path; the model's dtype)."""
        weight, scale = layer.weight, layer.weight_scale
        n, k = weight.shape
        if scale.shape[1] > 1 or self.scale_n > 1:
            scale = scale.repeat_interleave(self.scale_n, 0)[:n]
            scale = scale.repeat_interleave(self.group_k, 1)[:, :k]
        return (weight.float() * scale).to(dtype)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
              ) -> torch.Tensor:
        kernels = load_kernels("fp8_gemm") if x.device.type in KERNEL_DEVICE_TYPES else None
        if kernels is None:
            return F.linear(x, self.dequantized(layer, x.dtype), bias)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        y = self._cuda_matmul(kernels, layer, x2, bias)
        return y.reshape(*shape[:-1], y.shape[-1])

    def offers_fused_prologue(self, layer: nn.Module, x: torch.Tensor) -> bool:
        """The norm / SiLU is folded in where rows of x take the decode GEMV (into its loads)
        or torch._scaled_mm (into the activations' quantization, QUANT_PROLOGUE): CUDA,
        bf16/fp16 rows."""
        quant = load_kernels("fp8_quant")
        if not (x.device.type in KERNEL_DEVICE_TYPES and x.dim() == 2 and x.stride(1) == 1
                and x.dtype in GEMV_DTYPES and quant is not None):
            return False
        route = self._route(layer, x)
        return (route == "gemv" and GEMV_PROLOGUE) or (
            route in ("scaled_mm", "w8a8") and QUANT_PROLOGUE
            and layer.weight.shape[1] <= quant.QUANT_ONE_PASS_K)

    def apply_add_norm(self, layer: nn.Module, hidden: torch.Tensor,
                       residual: torch.Tensor | None, norm: nn.Module,
                       bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        kernels = load_kernels("fp8_gemm")
        route = self._route(layer, hidden)
        if route == "gemv":
            return kernels.fp8_add_rms_norm_gemv(
                hidden, residual, norm.weight, norm.eps, layer.weight, layer.weight_scale,
                self.scale_n, self.group_k, bias)
        xq, x_scale, total = load_kernels("fp8_quant").add_rms_norm_quantize(
            hidden.contiguous(), None if residual is None else residual.contiguous(),
            norm.weight, norm.eps, getattr(layer, "input_scale", None))
        return self._codes_matmul(kernels, route, layer, xq, x_scale, bias, hidden.dtype), total

    def apply_silu_mul(self, layer: nn.Module, gate_up: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
        kernels = load_kernels("fp8_gemm")
        route = self._route(layer, gate_up)
        if route == "gemv":
            return kernels.fp8_silu_mul_gemv(
                gate_up, layer.weight, layer.weight_scale, self.scale_n, self.group_k, bias)
        xq, x_scale = load_kernels("fp8_quant").silu_mul_quantize(
            gate_up.contiguous(), getattr(layer, "input_scale", None))
        return self._codes_matmul(kernels, route, layer, xq, x_scale, bias, gate_up.dtype)

    def _codes_matmul(self, kernels: Any, route: str, layer: nn.Module, xq: torch.Tensor,
                      x_scale: torch.Tensor, bias: torch.Tensor | None,
                      out_dtype: torch.dtype) -> torch.Tensor:
        """Quantized activations (codes, a scale per row) times the weight, by the route's
        FP8 tensor-core matmul: torch._scaled_mm or the Triton W8A8 tiles."""
        if route == "w8a8":
            return kernels.fp8_scaled_gemm(xq, x_scale, layer.weight, layer.weight_scale,
                                           self.scale_n, self.group_k, bias, out_dtype)
        return scaled_mm_codes(xq, x_scale, layer.weight, layer.weight_scale, bias, out_dtype)

    def _route(self, layer: nn.Module, x: torch.Tensor) -> str:
        """Which CUDA matmul rows of x (the layer's input, or the packed gate_up) take: "gemv",
        "gemm" (W8A16 tiles), "w8a8" (Triton W8A8 tiles) or "scaled_mm"."""
        rows = x.shape[0]
        if rows <= FP8_GEMV_MAX_ROWS:
            return "gemv"
        if rows <= FP8_GEMM_MAX_ROWS and x.dtype in GEMV_DTYPES:
            return "gemm"
        if rows <= FP8_A8_MAX_ROWS and x.dtype in GEMV_DTYPES and self.group_k >= 32:
            return "w8a8"
        n, k = layer.weight.shape
        if (layer.weight_scale.shape[1] == 1 and self.scale_n == 1 and scaled_mm_rowwise(x)
                and k % 16 == 0 and n % 16 == 0):  # its tiles
            return "scaled_mm"
        return "gemm"

    def _cuda_matmul(self, kernels: Any, layer: nn.Module, x: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
        args = (layer.weight, layer.weight_scale, self.scale_n, self.group_k, bias)
        route = self._route(layer, x)
        if route == "gemv":
            return kernels.fp8_gemv(x, *args)
        if route == "w8a8":
            return w8a8_gemm(x, layer.weight, layer.weight_scale, self.scale_n, self.group_k,
                             getattr(layer, "input_scale", None), bias)
        if route == "scaled_mm":
            return scaled_mm(x, layer.weight, layer.weight_scale,
                             getattr(layer, "input_scale", None), bias)
        return kernels.fp8_gemm(x, *args)


def scaled_mm_rowwise(x: torch.Tensor) -> bool:
    """Whether torch._scaled_mm with rowwise scales runs for x: CUDA sm89+ (Ada, Hopper),
    bf16 output."""
    return (x.device.type == "cuda" and x.dtype == torch.bfloat16
            and hasattr(torch, "_scaled_mm") and _sm89(x.device.index))


@functools.cache
def _sm89(index: int | None) -> bool:
    """Compute capability 8.9+ (asked once per card: the layers ask per matmul)."""
    return torch.cuda.get_device_capability(index) >= (8, 9)


def quantize_activations(x: torch.Tensor, input_scale: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], fp32 scales [M, 1]): per token (amax / 448), or by the
    checkpoint's static per-tensor input scale."""
    if input_scale is None:  # a true division (by a tensor: CUDA multiplies by 1 / scalar)
        amax = x.abs().amax(dim=1, keepdim=True).float()
        scale = (amax / torch.full_like(amax, FP8_MAX)).clamp(min=1e-12)
    else:
        scale = input_scale.reshape(1, 1).expand(x.shape[0], 1).contiguous()
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def scaled_mm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
              input_scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] (bf16) @ (weight [N, K] fp8 * weight_scale [N, 1])^T on FP8 tensor cores; the
    activations are quantized in one kernel launch (kernels.fp8_quant.quantize_rows)."""
    xq, x_scale = load_kernels("fp8_quant").quantize_rows(x, input_scale)
    return scaled_mm_codes(xq, x_scale, weight, weight_scale, bias, x.dtype)


def scaled_mm_codes(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor,
                    weight_scale: torch.Tensor, bias: torch.Tensor | None,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """(xq [M, K] e4m3 * x_scale [M, 1]) @ (weight * weight_scale [N, 1])^T by
    torch._scaled_mm, in out_dtype (+ bias)."""
    y = torch._scaled_mm(xq, weight.t(), scale_a=x_scale, scale_b=weight_scale.view(1, -1),
                         out_dtype=out_dtype)
    return y if bias is None else y + bias


def w8a8_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, scale_n: int,
              group_k: int, input_scale: torch.Tensor | None, bias: torch.Tensor | None,
              config: dict | None = None) -> torch.Tensor:
    """x [M, K] quantized per token (or by the static input scale), then the Triton W8A8 GEMM
    (kernels.fp8_gemm.fp8_scaled_gemm) against the FP8 weight in any scale layout."""
    xq, x_scale = load_kernels("fp8_quant").quantize_rows(x, input_scale)
    return load_kernels("fp8_gemm").fp8_scaled_gemm(xq, x_scale, weight, weight_scale, scale_n,
                                                    group_k, bias, out_dtype=x.dtype,
                                                    config=config)


def scaled_mm_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                  input_scale: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """What scaled_mm computes, in fp32 on any device: quantized activations times the
    dequantized weight."""
    xq, x_scale = quantize_activations(x, input_scale)
    y = (xq.float() * x_scale) @ (weight.float() * weight_scale).t()
    return (y if bias is None else y + bias.float()).to(x.dtype)
