"""An LM head that reads a quantized copy of its weight, then rescores the top candidates exactly.

The quantized CPU kernels (layers.gguf_linear) return bf16, whose steps near a logit of 25
are 0.125: enough to swap two close candidates (SmolLM2's "The" 25.33 / "L" 25.24). So the
whole vocabulary is scored on the int4 kernel (8 bits a weight: half the bytes of a
float32 read, as fast as an 8-bit read), and the RESCORE_TOP best rows are recomputed in the
model dtype against the dense weight (a gather of 64 rows): the logits that decide greedy
picks, top-k/top-p sets and reported top logprobs are exact; the tail keeps the bf16 error
(a few tenths of a logit at most), which only moves probabilities that are already tiny.
From BF16_MIN_ROWS rows (a batch of decodes) a bf16 copy of the weight scores the vocabulary
instead (oneDNN's bf16 matmul: one read of 2 bytes a weight serves all rows, while the int4
pair costs about 2 ms a row), rescored the same way. CPU time, 1 thread, SmolLM2's 576 ->
49,152 head (2026-12-06, shared 2-core Xeon, noisy): 1 / 4 / 8 / 16 / 32 rows, int4 pair +
rescoring 3.95 / 7.86 / 15.8 / 31.2 / 60.5 ms, bf16 + rescoring 4.34 / 7.92 / 8.73 / 11.0 / 15.0
ms, the dense float32 read (exact, the path of 16 rows and more before) 6.19 / 15.1 / 24.7 /
19.9 / 24.7 ms; in the engine (cold caches) one row on the bf16 copy made the whole decode step
slower (30.8 / 34.9 ms against 29.1 / 26.9 ms on the pair), so fewer rows keep the pair. The
bf16 copy costs 2 bytes a weight of memory (56 MiB for SmolLM2).
Where the compiled CPU op's kernels are built (kernels.cpu_decode: AVX512_BF16) they take
both up to KERNEL_MAX_ROWS rows: the pair on its int4 kernel (int4_rows) below BF16_MIN_ROWS,
and from there the bf16 weight, packed for its bf16 kernel (bf16_rows) instead of the copy
(same size), scored in float32 without oneDNN's bf16 rounding of the output. 1 thread,
SmolLM2's head (2026-12-06, shared 2-core EPYC), 1 / 4 / 16 rows: int4 pair 1.50 / 2.90 /
10.2 ms on the op (ATen's ~2 ms a row), bf16 1.43 / 1.59 / 4.68 ms on the op against oneDNN's
5.99 / 6.78 / 9.85 ms. Above KERNEL_MAX_ROWS, oneDNN on a bf16 copy made on first use.
One rank only (tensor parallelism keeps the dense head).
Imports: torch, cormorant.layers (embedding, linear, gguf_linear), cormorant.kernels
(cpu_decode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cormorant.kernels.cpu_decode import bf16_rows, int4_rows
from cormorant.layers.embedding import ParallelLMHead
from cormorant.layers.gguf_linear import ROWS_LAYOUT, Int4PairCpuMethod
from cormorant.layers.linear import ColumnParallelLinear

RESCORE_TOP = 64
# Rows from which a bf16 copy of the weight scores the vocabulary (module docstring).
BF16_MIN_ROWS = 4
# The most rows the compiled op's kernels score (module docstring; measured to 16).
KERNEL_MAX_ROWS = 16


class RescoredLMHead(nn.Module):
    def __init__(self, dense: ParallelLMHead) -> None:
        super().__init__()
        vocab, hidden = dense.weight.shape
        self.weight = dense.weight  # the dense (often tied) weight, shared, not copied
        self.bf16_min_rows: int | None = BF16_MIN_ROWS  # None: always the int4 pair
        self.approx = ColumnParallelLinear(hidden, vocab, bias=False,
                                           method=Int4PairCpuMethod(dense_min_rows=None))
        with torch.no_grad():
            self.approx.weight_loader(self.approx.weight, dense.weight.data)
            self.approx.method.finalize(self.approx)
        # The compiled op's kernels (None: ATen's pair and oneDNN on the bf16 copy).
        op, bf16_op = int4_rows(), bf16_rows()
        fits = vocab % 64 == 0 and hidden % 2 == 0
        self.rows_kernel = (op if op is not None and fits
                            and self.approx.int4_layout == ROWS_LAYOUT else None)
        self.bf16_kernel = bf16_op if bf16_op is not None and fits else None
        # bf16_rows' operand: [vocab / 64, hidden / 2, 64, 2], a column's two inputs together.
        self.weight_packed = None if self.bf16_kernel is None else (
            dense.weight.data.to(torch.bfloat16).view(vocab // 64, 64, hidden // 2, 2)
            .permute(0, 2, 1, 3).contiguous())
        self.weight_bf16: torch.Tensor | None = None  # oneDNN's operand, made on first use

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, hidden] -> [N, vocab] in hidden's dtype."""
        n = hidden.shape[0]
        bf16 = self.bf16_min_rows is not None and n >= self.bf16_min_rows
        if bf16 and self.bf16_kernel is not None and n <= KERNEL_MAX_ROWS:
            logits = self.bf16_kernel(hidden.to(torch.bfloat16).contiguous(), self.weight_packed)
            logits = logits.to(hidden.dtype)
        elif not bf16 and self.rows_kernel is not None and n <= KERNEL_MAX_ROWS:
            rows = self.approx.method.kernel_input(hidden.to(torch.bfloat16))  # [x | x]
            logits = self.rows_kernel(rows, self.approx.weight, self.approx.scales_zeros)
            logits = logits.to(hidden.dtype)
        elif bf16:
            if self.weight_bf16 is None:
                self.weight_bf16 = self.weight.data.to(torch.bfloat16)
            logits = F.linear(hidden.to(torch.bfloat16), self.weight_bf16).to(hidden.dtype)
        else:
            logits = self.approx(hidden)  # [N, vocab]
        top = logits.topk(min(RESCORE_TOP, logits.shape[-1]), dim=-1).indices  # [N, K]
        rows = self.weight[top]  # [N, K, hidden]
        exact = torch.bmm(rows, hidden[:, :, None])[..., 0]  # [N, K]
        return logits.scatter_(-1, top, exact)
