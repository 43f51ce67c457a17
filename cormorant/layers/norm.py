"""RMSNorm, optionally fused with the residual add that precedes it. Imports: torch only."""
from __future__ import annotations

import torch
from torch import nn


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
        replace it without touching the models."""
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x
