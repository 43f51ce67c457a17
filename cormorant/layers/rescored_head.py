"""An LM head that reads a quantized copy of its weight, then rescores the top candidates exactly.

The quantized CPU kernels (layers.gguf_linear) return bf16, whose steps near a logit of 25
are 0.125: enough to swap two close candidates (SmolLM2's "The" 25.33 / "L" 25.24). So the
whole vocabulary is scored on the int4 kernel (8 bits a weight: half the bytes of a
float32 read, as fast as an 8-bit read), and the RESCORE_TOP best rows are recomputed in the
model dtype against the dense weight (a gather of 64 rows): the logits that decide greedy
picks, top-k/top-p sets and reported top logprobs are exact; the tail keeps the bf16 error
(a few tenths of a logit at most), which only moves probabilities that are already tiny.
From DENSE_MIN_ROWS rows (a batch of decodes) the dense float32 weight is read instead: one
memory-bound read serves all rows and the logits are exact, while the int4 pair costs about
3 ms a row. CPU time, 1 thread, SmolLM2's 576 -> 49,152 head (2026-12-06, shared 2-core Xeon,
noisy): 1 / 4 / 8 / 16 / 32 rows int4 pair + rescoring 7.0 / 13.4 / 26.8 / 51.7 / 108 ms, dense
float32 11.0 / 28.2 / 41.4 / 33.2 / 42.4 ms; a whole decode step of 8 / 12 / 16 streams 88 /
124 / 139 ms with the int4 pair, 106 / 133 / 116 ms dense: the dense read from 16 rows.
One rank only (tensor parallelism keeps the dense head).
Imports: torch, cormorant.layers (embedding, linear, gguf_linear).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cormorant.layers.embedding import ParallelLMHead
from cormorant.layers.gguf_linear import Int4PairCpuMethod
from cormorant.layers.linear import ColumnParallelLinear

RESCORE_TOP = 64
# Rows from which the head reads its dense weight instead (exact; module docstring).
DENSE_MIN_ROWS = 16


class RescoredLMHead(nn.Module):
    def __init__(self, dense: ParallelLMHead) -> None:
        super().__init__()
        vocab, hidden = dense.weight.shape
        self.weight = dense.weight  # the dense (often tied) weight, shared, not copied
        self.dense_min_rows: int | None = DENSE_MIN_ROWS  # None: always the int4 pair
        self.approx = ColumnParallelLinear(hidden, vocab, bias=False,
                                           method=Int4PairCpuMethod(dense_min_rows=None))
        with torch.no_grad():
            self.approx.weight_loader(self.approx.weight, dense.weight.data)
            self.approx.method.finalize(self.approx)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] in hidden's dtype."""
        if self.dense_min_rows is not None and hidden.shape[0] >= self.dense_min_rows:
            return F.linear(hidden, self.weight)
        logits = self.approx(hidden)  # [N, vocab]
        top = logits.topk(min(RESCORE_TOP, logits.shape[-1]), dim=-1).indices  # [N, K]
        rows = self.weight[top]  # [N, K, hidden]
        exact = torch.bmm(rows, hidden[:, :, None])[..., 0]  # [N, K]
        return logits.scatter_(-1, top, exact)
