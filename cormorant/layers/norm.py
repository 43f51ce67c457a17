"""RMSNorm, optionally fused with the residual add that precedes it.

On CUDA tensors (with Triton installed) the forward runs cormorant.kernels.rmsnorm: one launch
for the add and the norm, in place. Everywhere else the PyTorch code below runs; it is also the
reference the kernels are tested against. Imports: torch, cormorant.kernels (lazily).
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
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 whatever the model dtype, cast back before the weight
        # multiply: the order Hugging Face uses, so low-precision results match it.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x), or with a residual: (norm(x + residual), x + residual) - the
        pre-norm decoder's add-then-normalise step in one call, so a fused kernel can
        replace it without touching the models.

        The kernel path overwrites x and residual with the two results (the decoder never
        reads either input again); norm(x) alone returns a new tensor on both paths."""
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
