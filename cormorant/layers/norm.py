"""RMSNorm, optionally fused with the prior residual add or deferred into the next projection.

On CUDA tensors (with Triton installed) the forward runs cormorant.kernels.rmsnorm: one launch
for the add and the norm, in place. Everywhere else the PyTorch code below runs; it is also the
reference the kernels are tested against.

A norm built with `deferred=True` (the decoder's norms before qkv_proj and gate_up_proj)
returns a NormedInput instead: the linear layer that consumes it computes it, folded into its
matmul where its LinearMethod offers that (layers.linear), else by this module's forward.
Imports: torch, cormorant.kernels (lazily).
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from cormorant.kernels import load as load_kernels


def norm_kernels(x: torch.Tensor) -> ModuleType | None:
    """The dispatch rule, in one place: kernels for CUDA tensors, else None (reference)."""
    return load_kernels("rmsnorm") if x.is_cuda else None


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, deferred: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.deferred = deferred
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 whatever the model dtype, cast back before the weight
        # multiply: the order Hugging Face uses, so low-precision results match it.
        if x.dtype == torch.float32 == self.weight.dtype:
            # ATen's rms_norm is these very ops in C++ (bit for bit: tests), one dispatch.
            return torch.rms_norm(x, self.weight.shape, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | NormedInput:
        """norm(x), or with a residual: (norm(x + residual), x + residual) - the pre-norm
        decoder's add-then-normalise step in one call. A deferred norm returns
        NormedInput(self, x, residual) for both forms and computes nothing yet."""
        if self.deferred:
            return NormedInput(self, x, residual)
        return self.compute(x, residual)

    def compute(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The unfused norm. The kernel path overwrites x and residual with the two results
        (the decoder never reads either input again); norm(x) alone returns a new tensor."""
        kernels = norm_kernels(x)
        if kernels is not None and x.dim() in (2, 3) and x.stride(-1) == 1:
            if residual is None:
                return kernels.rms_norm(x, self.weight, self.eps)
            if x.dim() == 2 and residual.stride(-1) == 1:
                return kernels.fused_add_rms_norm(x, residual, self.weight, self.eps)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x


class NormedInput:
    """norm(hidden + residual) (residual None: norm(hidden)), not computed yet: the input of
    the linear layer that consumes it. That layer either folds the add and the norm into its
    own matmul and reports the sum (`folded`), or asks for the tensor (`tensor`)."""

    def __init__(self, norm: RMSNorm, hidden: torch.Tensor, residual: torch.Tensor | None
                 ) -> None:
        self.norm = norm
        self.hidden = hidden  # [T, hidden_size]
        self.residual_in = residual  # [T, hidden_size] or None (the first layer)
        self._normed: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None

    @property
    def is_pending(self) -> bool:
        """Nothing computed yet: a consumer may still fold the norm into its matmul."""
        return self._sum is None

    @property
    def residual(self) -> torch.Tensor:
        """hidden + residual: the residual stream after this norm (the next norm adds to it).
        Computes the norm unfused if no consumer has run yet."""
        if self._sum is None:
            self.tensor()
        return self._sum

    def tensor(self) -> torch.Tensor:
        """The normalised input, computed by the norm's own (unfused) path, once."""
        if self._sum is None:
            if self.residual_in is None:
                self._normed, self._sum = self.norm.compute(self.hidden), self.hidden
            else:
                self._normed, self._sum = self.norm.compute(self.hidden, self.residual_in)
        if self._normed is None:
            raise RuntimeError("this NormedInput was folded into a projection already")
        return self._normed

    def folded(self, total: torch.Tensor) -> None:
        """A projection computed the norm in its matmul; total is hidden + residual."""
        assert self.is_pending, "a NormedInput is computed once"
        self._sum = total
