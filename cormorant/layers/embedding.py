"""Token embedding and LM head, split along the vocabulary for tensor parallelism.

With a world size of 1 they are a plain embedding lookup and a plain matmul. With several
ranks each holds vocab_size / world rows: lookups outside the local range read zeros and an
all-reduce sums the parts; logits are gathered along the vocabulary. The LM head of a decode
step of one row runs the skinny GEMM (layers.linear's dispatch rule).
Imports: torch, cormorant.layers.parallel, cormorant.layers.linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cormorant.layers.linear import decode_gemv_kernels
from cormorant.layers.parallel import all_gather_last_dim, all_reduce, tp_rank_and_size


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank_and_size()
        if vocab_size % self.tp_size:
            raise ValueError(f"vocab size {vocab_size} does not divide across "
                             f"{self.tp_size} tensor-parallel ranks")
        self.vocab_size = vocab_size
        self.num_local = vocab_size // self.tp_size
        self.vocab_start = self.tp_rank * self.num_local
        weight = torch.empty(self.num_local, hidden_size)  # [local_vocab, hidden]
        self.weight = nn.Parameter(weight, requires_grad=False)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        part = loaded.narrow(0, self.vocab_start, self.num_local)
        if param.data.shape != part.shape:
            raise ValueError(f"embedding of shape {tuple(loaded.shape)} does not fit "
                             f"vocab {self.vocab_size} x hidden {param.shape[1]}")
        param.data.copy_(part)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)  # [T, hidden]
        local_ids = input_ids - self.vocab_start
        is_local = (local_ids >= 0) & (local_ids < self.num_local)
        out = F.embedding(local_ids.clamp(0, self.num_local - 1), self.weight)
        return all_reduce(out * is_local[:, None].to(out.dtype))


class ParallelLMHead(VocabParallelEmbedding):
    """Projects final hidden states onto the vocabulary. A tied model makes this module's
    weight the embedding's parameter instead of loading its own."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kernels = decode_gemv_kernels(hidden, self.weight)
        logits = (F.linear(hidden, self.weight) if kernels is None  # [N, local_vocab]
                  else kernels.skinny_gemm(hidden, self.weight))
        return all_gather_last_dim(logits)  # [N, vocab]
