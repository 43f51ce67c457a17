"""The grammar-mask kernel (kernels.grammar_mask) against the sampler's PyTorch path: random
bits on a subset of rows, a vocabulary not a multiple of 32, a padded embedding wider than
the mask, and a row left unconstrained."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from cormorant.kernels.grammar_mask import apply_bitmask_  # noqa: E402
from cormorant.runner.sampler import apply_grammar_mask  # noqa: E402


@pytest.mark.parametrize("vocab,mask_vocab", [(1000, 1000), (1100, 1000), (2100, 2100)])
def test_bitmask_kernel_matches_the_reference(vocab, mask_vocab, device):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(5, vocab, generator=gen)
    rows = torch.tensor([3, 0, 4], dtype=torch.int64)
    words = torch.randint(-2**31, 2**31 - 1, (3, (mask_vocab + 31) // 32), generator=gen,
                          dtype=torch.int64).to(torch.int32)
    words[1] = 0  # a row with nothing allowed but what the grammar says: nothing
    expected = apply_grammar_mask(logits.clone(), rows, words)  # CPU: the reference
    got = logits.clone().to(device)
    apply_bitmask_(got, rows.to(device), words.to(device))
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=0)
    assert torch.equal(got[1].cpu(), logits[1])  # the unconstrained row is untouched
    assert torch.isinf(got[0].cpu()).all()
    # logits past the mask's 32 * W columns are never allowed
    assert torch.isinf(got[3, (mask_vocab + 31) // 32 * 32:].cpu()).all()
