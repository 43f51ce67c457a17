"""Int4/int8 weight-only linear layers: AWQ, GPTQ and compressed-tensors layouts, one runtime layout.

IntWeightMethod (a LinearMethod) registers the parameters of one on-disk layout, tagged with
`set_layout` so that layers.linear loads them generically (fused q/k/v and gate/up slices,
tensor-parallel splits), checks their shapes as they load, and at `finalize` repacks them into
the runtime layout of kernels.int_gemm (layers.int_packing): int32 codes packed along K,
scales and zeros per group in the model dtype (no zeros for symmetric weights); the
checkpoint's tensors are then dropped.

Layouts (IntSpec.layout), K input features, N output features, P = 32 / bits, G the group:
  awq       qweight int32 [K, N/P] (AWQ's code order), qzeros int32 [K/G, N/P], scales [K/G, N]
  gptq      qweight int32 [K/P, N], qzeros int32 [K/G, N/P] (v1 stores zero - 1), scales
            [K/G, N], g_idx int32 [K] (desc_act: the group of each input row, in any order)
  ct-packed compressed-tensors pack-quantized: weight_packed int32 [N, K/P] (codes offset by
            2^(bits-1)), weight_scale [N, K/G], weight_zero_point int32 [N/P, K/G] when
            asymmetric, weight_shape [2]
  ct-naive  compressed-tensors naive-quantized int8: weight int8 [N, K], weight_scale [N, K/G],
            weight_zero_point int8 [N, K/G] when asymmetric
  online    a dense weight quantized at finalize (`--quantization int4|int8`): symmetric, group
            128 where it divides K, else one group per row
Act-order (desc_act) checkpoints are repacked with their input rows sorted by group; the
layer permutes its input the same way (one gather) before the matmul.
On CUDA (INT_KERNEL_DEVICE_TYPES) the matmul is kernels.int_gemm, which dequantizes inside the
kernel; elsewhere the reference: dequantize to fp32, then matmul. One bf16/fp16 row (batch-1
decode) folds a deferred residual add + RMSNorm or SiLU-and-multiply into the GEMV
(offers_fused_prologue), as the dense and FP8 methods do.
Imports: torch, cormorant.layers (linear, int_packing), cormorant.kernels (lazily).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from cormorant.kernels import load as load_kernels
from cormorant.layers import int_packing
from cormorant.layers.linear import LinearMethod, set_layout

LAYOUTS = ("awq", "gptq", "ct-packed", "ct-naive", "online")
INT_KERNEL_DEVICE_TYPES = ("cuda",)  # where kernels.int_gemm runs (tests widen it)
FUSED_DTYPES = (torch.bfloat16, torch.float16)  # rows whose norm / SiLU the GEMV folds in
# CORMORANT_INT_FUSED=1 folds the norm / SiLU into the one-row GEMV; off: the fused GEMV took
# longer than the norm kernel plus the plain GEMV on an H100 (2026-12-07, cvt_probe at M = 1:
# qkv 16.2 against 11.9 us, gate_up 61.8 against 33.1, down 29.1 against 20.0).
FUSED_PROLOGUE = os.environ.get("CORMORANT_INT_FUSED", "0") == "1"
ONLINE_GROUP = 128


@dataclass(frozen=True)
class IntSpec:
    """One int weight format as a checkpoint config describes it."""

    layout: str
    bits: int
    group_size: int  # -1: one group over all input features
    symmetric: bool = True  # ct-*: no zero points stored (zero = 2^(bits-1))
    zero_offset: int = 1  # gptq: what the checkpoint's zeros lack (v1 stores zero - 1)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS or self.bits not in (4, 8):
            raise ValueError(f"int weights: layout {self.layout!r} with {self.bits} bits is "
                             f"not supported; layouts {', '.join(LAYOUTS)}, 4 or 8 bits")


class IntWeightMethod(LinearMethod):
    """Weights of one IntSpec layout, repacked into the runtime layout at finalize."""

    def __init__(self, spec: IntSpec, name: str = "a linear layer",
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.spec, self.name, self.device, self.dtype = spec, name, device, dtype
        self.pack = 32 // spec.bits
        self.k = self.n = self.group = 0
        self._g_idx_loaded = False

    # -- parameters of each layout ------------------------------------------------------
    def create_weights(self, layer: nn.Module, input_size: int, output_size: int) -> None:
        self.k, self.n = input_size, output_size
        self.group = self._group(input_size)
        getattr(self, "_create_" + self.spec.layout.replace("-", "_"))(layer)

    def _group(self, k: int) -> int:
        g = self.spec.group_size
        if self.spec.layout == "online":
            return ONLINE_GROUP if k % ONLINE_GROUP == 0 else k
        if g == -1:
            return k
        if g <= 0 or k % g:
            raise ValueError(f"group size {g} does not divide the {k} input features of "
                             f"{self.name}")
        return g

    def _param(self, layer: nn.Module, name: str, shape: tuple[int, ...], dtype: torch.dtype,
               **layout) -> None:
        if any(s <= 0 for s in shape):
            raise ValueError(f"{self.name}: {self.n} x {self.k} features do not fit the "
                             f"{self.spec.layout} layout ({self.spec.bits} bits)")
        data = torch.empty(shape, dtype=dtype, device=self.device)
        setattr(layer, name, set_layout(nn.Parameter(data, requires_grad=False), **layout))

    def _need(self, features: int, what: str) -> int:
        if features % self.pack:
            raise ValueError(f"{self.name}: {features} {what} features are not a multiple of "
                             f"{self.pack} ({self.spec.layout}, {self.spec.bits} bits)")
        return features // self.pack

    def _create_awq(self, layer: nn.Module) -> None:
        k, n, g, p = self.k, self.n, self.group, self.pack
        packed = dict(output_dim=1, input_dim=0, packed_dim=1, packed_factor=p)
        self._param(layer, "qweight", (k, self._need(n, "output")), torch.int32, **packed)
        self._param(layer, "qzeros", (k // g, n // p), torch.int32, **packed)
        self._param(layer, "scales", (k // g, n), torch.float32, output_dim=1, input_dim=0)

    def _create_gptq(self, layer: nn.Module) -> None:
        k, n, g, p = self.k, self.n, self.group, self.pack
        self._param(layer, "qweight", (self._need(k, "input"), n), torch.int32, output_dim=1,
                    input_dim=0, packed_dim=0, packed_factor=p)
        self._param(layer, "qzeros", (k // g, self._need(n, "output")), torch.int32,
                    output_dim=1, input_dim=0, packed_dim=1, packed_factor=p)
        self._param(layer, "scales", (k // g, n), torch.float32, output_dim=1, input_dim=0)
        self._param(layer, "g_idx", (k,), torch.int32, output_dim=None, input_dim=0)

    def _create_ct_packed(self, layer: nn.Module) -> None:
        k, n, g, p = self.k, self.n, self.group, self.pack
        self._param(layer, "weight_packed", (n, self._need(k, "input")), torch.int32,
                    packed_dim=1, packed_factor=p)
        self._param(layer, "weight_scale", (n, k // g), torch.float32)
        if not self.spec.symmetric:
            self._param(layer, "weight_zero_point", (self._need(n, "output"), k // g),
                        torch.int32, packed_dim=0, packed_factor=p)
        self._param(layer, "weight_shape", (2,), torch.int64, output_dim=None, input_dim=None)

    def _create_ct_naive(self, layer: nn.Module) -> None:
        if self.spec.bits != 8:
            raise ValueError("compressed-tensors naive-quantized int weights must be 8-bit")
        k, n, g = self.k, self.n, self.group
        self._param(layer, "weight", (n, k), torch.int8)
        self._param(layer, "weight_scale", (n, k // g), torch.float32)
        if not self.spec.symmetric:
            self._param(layer, "weight_zero_point", (n, k // g), torch.int8)

    def _create_online(self, layer: nn.Module) -> None:
        weight = torch.empty(self.n, self.k, dtype=self.dtype, device=self.device)
        layer.weight = nn.Parameter(weight, requires_grad=False)  # untagged: load_rows

    def load_param(self, layer: nn.Module, param: nn.Parameter, loaded: torch.Tensor,
                   start: int, shard_index: int) -> None:
        """weight_shape is checked, not kept; g_idx must agree across fused projections."""
        if param is getattr(layer, "weight_shape", None):
            if loaded.numel() != 2 or int(loaded.reshape(-1)[1]) != layer.input_size:
                raise ValueError(f"{self.name}: weight_shape {loaded.tolist()} does not match "
                                 f"the layer's {layer.input_size} input features")
            return
        if param is getattr(layer, "g_idx", None) and self._g_idx_loaded:
            if not torch.equal(param.data, loaded.to(param.device, param.dtype)):
                raise ValueError(f"{self.name}: the fused projections have different g_idx "
                                 "(act-order); this model computes them in one layer")
            return
        super().load_param(layer, param, loaded, start, shard_index)
        self._g_idx_loaded |= param is getattr(layer, "g_idx", None)

    # -- repacking into the runtime layout ----------------------------------------------
    def finalize(self, layer: nn.Module) -> None:
        with torch.no_grad():
            codes, scales, zeros, perm = getattr(
                self, "_unpack_" + self.spec.layout.replace("-", "_"))(layer)
        for name, param in list(layer.named_parameters(recurse=False)):
            if param is not layer.bias:
                delattr(layer, name)
        frozen = lambda t: nn.Parameter(t.contiguous(), requires_grad=False)  # noqa: E731
        layer.int_qweight = frozen(int_packing.pack(codes, self.spec.bits, 0))
        # Scales in the model dtype (as the matmul's inputs); zeros too (small integers, exact),
        # or none at all when every one is 2^(bits-1): symmetric weights read no zeros.
        layer.int_scales = frozen(scales.to(self.dtype))
        symmetric = bool((zeros == (1 << (self.spec.bits - 1))).all())
        layer.int_zeros = None if symmetric else frozen(zeros.to(self.dtype))
        layer.int_perm = None if perm is None else frozen(perm)

    def _unpack_awq(self, layer: nn.Module):
        bits = self.spec.bits
        codes = int_packing.awq_unorder(int_packing.unpack(layer.qweight.data, bits, 1))
        zeros = int_packing.awq_unorder(int_packing.unpack(layer.qzeros.data, bits, 1))
        return codes, layer.scales.data, zeros.float(), None

    def _unpack_gptq(self, layer: nn.Module):
        bits = self.spec.bits
        codes = int_packing.unpack(layer.qweight.data, bits, 0)
        zeros = int_packing.unpack(layer.qzeros.data, bits, 1).float() + self.spec.zero_offset
        g_idx = layer.g_idx.data.long()
        g_idx = g_idx - g_idx.min()  # a row-parallel rank's slice starts at a later group
        natural = torch.arange(self.k, device=g_idx.device) // self.group
        if torch.equal(g_idx, natural):
            return codes, layer.scales.data, zeros, None
        perm = torch.argsort(g_idx, stable=True)
        if not torch.equal(g_idx[perm], natural):
            raise ValueError(f"{self.name}: g_idx does not put {self.group} input rows in "
                             f"each of the {self.k // self.group} groups")
        return codes[perm], layer.scales.data, zeros, perm

    def _unpack_ct_packed(self, layer: nn.Module):
        bits, half = self.spec.bits, 1 << (self.spec.bits - 1)
        codes = int_packing.unpack(layer.weight_packed.data, bits, 1).t()
        scales = layer.weight_scale.data.t()
        if self.spec.symmetric:
            zeros = torch.full_like(scales, float(half))
        else:
            zeros = int_packing.unpack(layer.weight_zero_point.data, bits, 0).t().float()
        return codes, scales, zeros, None

    def _unpack_ct_naive(self, layer: nn.Module):
        codes = layer.weight.data.t().to(torch.int32) + 128
        scales = layer.weight_scale.data.t()
        zp = getattr(layer, "weight_zero_point", None)
        zeros = torch.full_like(scales, 128.0) if zp is None else zp.data.t().float() + 128
        return codes, scales, zeros, None

    def _unpack_online(self, layer: nn.Module):
        """Symmetric round-to-nearest per group: code = clamp(round(w / s)) + 2^(bits-1)."""
        half = 1 << (self.spec.bits - 1)
        w = layer.weight.data.float().t().reshape(self.k // self.group, self.group, self.n)
        scales = (w.abs().amax(1) / (half - 1)).clamp_min(1e-10)  # [K/G, N]
        q = torch.round(w / scales[:, None, :]).clamp(-half, half - 1)
        codes = (q + half).to(torch.int32).reshape(self.k, self.n)
        return codes, scales, torch.full_like(scales, float(half)), None

    # -- the matmul --------------------------------------------------------------------
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
              ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if layer.int_perm is not None:
            rows = rows.index_select(1, layer.int_perm)
        kernels = (load_kernels("int_gemm") if rows.device.type in INT_KERNEL_DEVICE_TYPES
                   else None)
        if kernels is not None:
            y = kernels.int_gemm(rows.contiguous(), layer.int_qweight, layer.int_scales,
                                 layer.int_zeros, self.spec.bits, self.group)
        else:
            w = int_packing.dequantize(layer.int_qweight, layer.int_scales, layer.int_zeros,
                                       self.spec.bits, self.group)
            y = (rows.float() @ w).to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def offers_fused_prologue(self, layer: nn.Module, x: torch.Tensor) -> bool:
        """The one-row GEMV folds the norm / SiLU in (kernels.int_gemm): CUDA, bf16/fp16,
        input rows in their natural order (no act-order permutation)."""
        return (FUSED_PROLOGUE and x.device.type in INT_KERNEL_DEVICE_TYPES and x.dim() == 2
                and x.shape[0] == 1
                and x.dtype in FUSED_DTYPES and x.is_contiguous() and layer.int_perm is None
                and load_kernels("int_gemm") is not None)

    def apply_add_norm(self, layer: nn.Module, hidden: torch.Tensor,
                       residual: torch.Tensor | None, norm: nn.Module,
                       bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y, total = load_kernels("int_gemm").int_add_rms_norm_gemv(
            hidden, residual, norm.weight, norm.eps, layer.int_qweight, layer.int_scales,
            layer.int_zeros, self.spec.bits, self.group)
        return (y if bias is None else y + bias), total

    def apply_silu_mul(self, layer: nn.Module, gate_up: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
        y = load_kernels("int_gemm").int_silu_mul_gemv(
            gate_up, layer.int_qweight, layer.int_scales, layer.int_zeros, self.spec.bits,
            self.group)
        return y if bias is None else y + bias
