"""The grammar mask on the logits, read straight from the packed bits: one Triton launch.

`apply_bitmask_(logits, rows, words)` writes -inf into logits[rows[r], t] wherever bit t of
words[r] is 0 (bit t of a row: word t // 32, bit t % 32; logits past the mask's 32 * W
columns are never allowed). In place, and it only writes: at 256 rows of a 152k vocabulary
it reads 5 MB of bits, where unpacking them into a [R, V] boolean mask and masked_fill on a
copy of the rows moved ~1 GB a step (runner.sampler.apply_grammar_mask stays the reference
and the CPU path).

Imports only torch and triton.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # tokens a program: 32 words of bits


@triton.jit
def _bitmask_kernel(logits_ptr, stride, rows_ptr, words_ptr, num_words, vocab,
                    BLOCK: tl.constexpr):
    r = tl.program_id(0)
    tokens = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_vocab = tokens < vocab
    word_index = tokens // 32
    word = tl.load(words_ptr + r.to(tl.int64) * num_words + word_index,
                   mask=in_vocab & (word_index < num_words), other=0)
    banned = ((word >> (tokens % 32)) & 1) == 0
    row = tl.load(rows_ptr + r).to(tl.int64)
    tl.store(logits_ptr + row * stride + tokens, float("-inf"), mask=in_vocab & banned)


def apply_bitmask_(logits: torch.Tensor, rows: torch.Tensor, words: torch.Tensor) -> None:
    """logits [N, V] float (last dim contiguous), rows [R] int of distinct rows, words [R, W]
    int32 on the same device: -inf where a row's bit is 0, in place."""
    assert logits.dim() == 2 and logits.stride(1) == 1, "logits must be [N, V], rows contiguous"
    assert words.dim() == 2 and words.dtype == torch.int32 and words.is_contiguous()
    assert rows.dim() == 1 and rows.shape[0] == words.shape[0]
    if rows.shape[0] == 0:
        return
    vocab = logits.shape[1]
    grid = (rows.shape[0], triton.cdiv(vocab, BLOCK))
    _bitmask_kernel[grid](logits, logits.stride(0), rows, words, words.shape[1], vocab,
                          BLOCK=BLOCK)
