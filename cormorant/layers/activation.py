"""Activations. SiluAndMul consumes the fused gate_up projection.

On CUDA tensors (with Triton installed) it runs cormorant.kernels.activation.silu_and_mul: one
launch, fp32 math, one rounding. Elsewhere the PyTorch code runs (CPU path and reference).
Built with `deferred=True` (the MLP's, before down_proj) it returns a SiluMulInput: the linear
layer that consumes it folds the activation into its matmul where its LinearMethod offers
that (layers.linear), else runs this module's compute.
Imports: torch, cormorant.kernels (lazily).
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from cormorant.kernels import load as load_kernels


def activation_kernels(x: torch.Tensor) -> ModuleType | None:
    """The dispatch rule, in one place: the kernel for CUDA tensors, else None (reference)."""
    return load_kernels("activation") if x.is_cuda else None


class SiluAndMul(nn.Module):
    """silu(gate) * up, where the input is [..., 2 * intermediate] = cat(gate, up)."""

    def __init__(self, deferred: bool = False) -> None:
        super().__init__()
        self.deferred = deferred

    def forward(self, x: torch.Tensor) -> torch.Tensor | SiluMulInput:
        return SiluMulInput(self, x) if self.deferred else self.compute(x)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        kernels = activation_kernels(x)
        if kernels is not None and x.dim() == 2 and x.stride(-1) == 1:
            return kernels.silu_and_mul(x)  # [T, intermediate]
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up  # [..., intermediate]


class SiluMulInput:
    """silu(gate) * up of a packed gate_up [T, 2 * intermediate], not computed yet: the input
    of the linear layer that consumes it (which may fold it into its matmul)."""

    def __init__(self, act: SiluAndMul, gate_up: torch.Tensor) -> None:
        self.act = act
        self.gate_up = gate_up

    def tensor(self) -> torch.Tensor:
        """The activation, computed by SiluAndMul's own (unfused) path."""
        return self.act.compute(self.gate_up)
