"""The grammar bitmask in the sampler: packed int32 rows from the engine, applied first, to
the constrained rows only; logprobs are those of the masked distribution."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from cormorant.runner.request_state import RequestState
from cormorant.runner.sampler import Sampler
from cormorant.runner.sampling_metadata import SamplingMetadata
from cormorant.sampling_params import SamplingParams

VOCAB = 70  # not a multiple of 32: the last word is partly padding
_seq_ids = itertools.count()


def _seq(**params) -> RequestState:
    return RequestState(next(_seq_ids), 0, SamplingParams(**params), [1, 2, 3], 3)


def _bits(allowed_sets: list[set[int]], vocab: int) -> bytes:
    """Pack allowed token sets as the engine does: bit t of a row set when t is allowed."""
    words = np.zeros((len(allowed_sets), (vocab + 31) // 32), dtype=np.uint32)
    for row, allowed in enumerate(allowed_sets):
        for t in allowed:
            words[row, t // 32] |= np.uint32(1 << (t % 32))
    return words.view("<i4").tobytes()


def _logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_picks_the_best_allowed_token_and_other_rows_are_untouched():
    logits = _logits(3)
    seqs = [_seq(temperature=0.0) for _ in range(3)]
    allowed = {5, 33, 64, 69}
    meta = SamplingMetadata.build(seqs, "cpu", grammar=([1], _bits([allowed], VOCAB)))
    out = Sampler()(logits, meta).token_ids
    best_allowed = max(allowed, key=lambda t: logits[1, t].item())
    assert out.tolist() == [logits[0].argmax().item(), best_allowed, logits[2].argmax().item()]


def test_sampled_rows_draw_only_allowed_tokens():
    allowed = [{0, 31, 32}, {68}]
    seqs = [_seq(temperature=1.5, seed=s) for s in range(2)]
    meta = SamplingMetadata.build(seqs, "cpu", grammar=([0, 1], _bits(allowed, VOCAB)))
    sampler = Sampler()
    drawn = [set(), set()]
    for i in range(200):
        ids = sampler(_logits(2, seed=i), meta).token_ids.tolist()
        for row, token in enumerate(ids):
            drawn[row].add(token)
    assert drawn[0] == allowed[0] and drawn[1] == allowed[1]


def test_logprobs_are_of_the_masked_distribution():
    logits = _logits(2, seed=3)
    seqs = [_seq(temperature=0.0, logprobs=4), _seq(temperature=0.0, logprobs=4)]
    allowed = {2, 40, 41}
    meta = SamplingMetadata.build(seqs, "cpu", grammar=([0], _bits([allowed], VOCAB)))
    out = Sampler()(logits, meta)
    masked = torch.full((VOCAB,), float("-inf"))
    masked[list(allowed)] = logits[0, list(allowed)]
    expected = torch.log_softmax(masked, dim=-1)
    assert torch.allclose(out.topk_values[0, :3], expected.topk(3).values)
    assert set(out.topk_ids[0, :3].tolist()) == allowed
    assert out.topk_values[0, 3] == float("-inf")
    assert torch.allclose(out.topk_values[1], torch.log_softmax(logits[1], -1).topk(4).values)


def test_logits_past_the_tokenizer_vocabulary_are_masked():
    """A padded embedding: the model's vocabulary is wider than the tokenizer's bitmask."""
    logits = _logits(1)
    logits[0, VOCAB - 1] = 100.0  # the best token, but outside the 64-token mask
    meta = SamplingMetadata.build([_seq(temperature=0.0)], "cpu",
                                  grammar=([0], _bits([{1, 2}], 64)))
    token = Sampler()(logits, meta).token_ids.item()
    assert token in (1, 2)
