"""Tests for runner/sampler.py and runner/sampling_metadata.py (CPU; CUDA sync check if present).

Each stage is compared with a hand computation (or transformers' processor), and seeded
sampling is checked for reproducibility across batch compositions and row positions.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from cormorant.runner.request_state import RequestState
from cormorant.runner.sampler import Sampler, apply_bias_penalties_bans
from cormorant.runner.sampling_metadata import SamplingMetadata, stream_seed
from cormorant.sampling_params import SamplingParams

VOCAB = 32
_seq_ids = itertools.count()


def make_seq(prompt=(1, 2, 3), output=(), index=0, **params) -> RequestState:
    """The runner's state of one sequence, as runner.request_state keeps it."""
    return RequestState(next(_seq_ids), index, SamplingParams(**params),
                        [*prompt, *output], len(prompt))


def sample(seqs, logits, sampler=None, eos=()):
    meta = SamplingMetadata.build(seqs, "cpu", eos_token_ids=eos)
    return (sampler or Sampler(seed=0))(logits, meta)


def random_logits(rows, vocab=VOCAB, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def fake_model_logits(seq: RequestState, vocab=VOCAB) -> torch.Tensor:
    """Deterministic logits that depend on the sequence's whole history, like a model's."""
    key = hash(tuple(seq.token_ids)) & 0xFFFFFFFF
    return torch.randn(vocab, generator=torch.Generator().manual_seed(key)) * 2  # [V]


# ---------------------------------------------------------------- greedy and truncation


def test_plain_greedy_fast_path_is_argmax_without_logprobs():
    logits = random_logits(4)
    out = sample([make_seq(temperature=0.0) for _ in range(4)], logits)
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None and out.topk_ids is None


def test_top_k_1_equals_greedy_and_tiny_temperature_equals_argmax():
    logits = random_logits(8, seed=1)
    for trial in range(5):
        seqs = [make_seq(top_k=1) for _ in range(4)] + [make_seq(temperature=1e-3)
                                                        for _ in range(4)]
        out = sample(seqs, logits, Sampler(seed=trial))
        assert torch.equal(out.token_ids, logits.argmax(-1))


def test_greedy_and_random_rows_mix_in_one_batch():
    logits = random_logits(2, seed=2)
    logits[1] = 0.0  # uniform row: a random row would rarely land on token 0 every time
    seqs = [make_seq(temperature=0.0), make_seq(temperature=1.0)]
    picks = {sample(seqs, logits, Sampler(seed=s)).token_ids[1].item() for s in range(20)}
    assert len(picks) > 5
    assert sample(seqs, logits).token_ids[0].item() == logits[0].argmax().item()


def test_top_p_keeps_exactly_the_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log().expand(4000, 4).contiguous()
    for top_p, nucleus in [(0.45, {1}), (0.75, {1, 3}), (0.9, {1, 3, 2}), (1.0, {0, 1, 2, 3})]:
        seqs = [make_seq(top_p=top_p) for _ in range(4000)]
        seen = set(sample(seqs, logits).token_ids.tolist())
        assert seen == nucleus, (top_p, seen)


def test_top_k_keeps_the_k_most_likely():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]]).expand(3000, 5).contiguous()
    seqs = [make_seq(top_k=2) for _ in range(3000)]
    assert set(sample(seqs, logits).token_ids.tolist()) == {1, 3}


def test_min_p_drops_tokens_below_fraction_of_the_max():
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08])
    logits = probs.log().expand(4000, 4).contiguous()
    # min_p = 0.2: threshold 0.1 -> keeps 0.5, 0.3, 0.12 and drops 0.08.
    seen = set(sample([make_seq(min_p=0.2) for _ in range(4000)], logits).token_ids.tolist())
    assert seen == {0, 1, 2}
    seen = set(sample([make_seq(min_p=0.7) for _ in range(4000)], logits).token_ids.tolist())
    assert seen == {0}


def test_sampling_frequencies_match_softmax():
    num = 40000
    logits = random_logits(1, vocab=8, seed=3)
    for temperature in (1.0, 0.7):
        expected = torch.softmax(logits[0] / temperature, -1) * num
        seqs = [make_seq(temperature=temperature) for _ in range(num)]
        out = sample(seqs, logits.expand(num, 8).contiguous(), Sampler(seed=11))
        observed = torch.bincount(out.token_ids, minlength=8).float()
        chi2 = ((observed - expected) ** 2 / expected).sum().item()
        assert chi2 < 40, chi2  # 7 degrees of freedom: p ~ 1e-6 at 40


def test_seeded_rows_also_follow_the_distribution():
    num = 3000
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    seqs = [make_seq(seed=s) for s in range(num)]  # one draw from each of 3000 streams
    out = sample(seqs, logits.expand(num, 4).contiguous())
    observed = torch.bincount(out.token_ids, minlength=4).float()
    expected = torch.softmax(logits[0], -1) * num
    assert ((observed - expected) ** 2 / expected).sum().item() < 30


def test_top_k_with_top_p_renormalises_within_the_kept_set():
    num = 20000
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    seqs = [make_seq(top_k=3, temperature=1.0) for _ in range(num)]
    out = sample(seqs, logits.expand(num, 5).contiguous())
    observed = torch.bincount(out.token_ids, minlength=5).float()
    expected = torch.softmax(logits[0, :3], -1) * num
    assert observed[3:].sum() == 0
    assert ((observed[:3] - expected) ** 2 / expected).sum().item() < 30


# ---------------------------------------------------------------- penalties, bias, bans


def _processed_logits(seq: RequestState, logits: torch.Tensor) -> torch.Tensor:
    """The whole processed row (bias, penalties, bans), not just the argmax it leads to."""
    return apply_bias_penalties_bans(logits, SamplingMetadata.build([seq], "cpu"))


def test_repetition_penalty_matches_transformers():
    logits = random_logits(1, seed=4)
    prompt, output = [3, 5, 5, 7], [7, 9, 0]
    for penalty in (1.3, 0.8):
        seq = make_seq(prompt=prompt, output=output, repetition_penalty=penalty)
        ours = _processed_logits(seq, logits)
        ids = torch.tensor([prompt + output])
        theirs = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert not torch.equal(ours, logits)


def test_frequency_and_presence_penalties_count_output_tokens_only():
    logits = random_logits(1, seed=5)
    seq = make_seq(prompt=[1, 2, 2], output=[2, 4, 4, 4], frequency_penalty=0.5,
                   presence_penalty=1.5)
    expected = logits.clone()
    expected[0, 2] -= 0.5 * 1 + 1.5
    expected[0, 4] -= 0.5 * 3 + 1.5  # token 1 is only in the prompt: untouched
    torch.testing.assert_close(_processed_logits(seq, logits), expected, rtol=0, atol=1e-6)


def test_penalties_leave_other_rows_bit_identical():
    logits = random_logits(2, seed=6)
    seqs = [make_seq(output=[1, 2], repetition_penalty=1.5, frequency_penalty=1.0),
            make_seq(output=[1, 2])]
    out = apply_bias_penalties_bans(logits, SamplingMetadata.build(seqs, "cpu"))
    assert torch.equal(out[1], logits[1]) and not torch.equal(out[0], logits[0])


def test_logit_bias_adds_to_the_named_tokens():
    logits = torch.zeros(2, VOCAB)
    seqs = [make_seq(temperature=0.0, logit_bias={"7": 5.0, 3: -2.0}),
            make_seq(temperature=0.0, logit_bias={11: 100.0})]
    expected = logits.clone()
    expected[0, 7], expected[0, 3], expected[1, 11] = 5.0, -2.0, 100.0
    got = apply_bias_penalties_bans(logits, SamplingMetadata.build(seqs, "cpu"))
    assert torch.equal(got, expected)
    assert sample(seqs, logits).token_ids.tolist() == [7, 11]
    # A large bias wins even when sampling at temperature 1.
    assert sample([make_seq(logit_bias={5: 100.0})], logits[:1]).token_ids.item() == 5


def test_min_tokens_bans_eos_and_stop_ids_until_reached():
    logits = torch.zeros(1, VOCAB)
    logits[0, 0], logits[0, 9], logits[0, 4] = 10.0, 9.0, 8.0  # 0 = EOS, 9 = stop id
    kwargs = dict(temperature=0.0, min_tokens=3, stop_token_ids=[9])
    below = make_seq(output=[1, 2], **kwargs)
    assert sample([below], logits, eos={0}).token_ids.item() == 4
    reached = make_seq(output=[1, 2, 3], **kwargs)
    assert sample([reached], logits, eos={0}).token_ids.item() == 0
    # ignore_eos: EOS stops nothing, so it is not held back; the stop id still is.
    ignoring = make_seq(output=[1], ignore_eos=True, **kwargs)
    assert sample([ignoring], logits, eos={0}).token_ids.item() == 0
    logits[0, 0] = -10.0
    assert sample([ignoring], logits, eos={0}).token_ids.item() == 4


def test_min_tokens_ban_survives_penalties_and_bias():
    logits = torch.zeros(1, VOCAB)
    logits[0, 0] = -1.0
    seq = make_seq(output=[5], temperature=0.0, min_tokens=4, logit_bias={0: 50.0},
                   repetition_penalty=0.5)
    assert sample([seq], logits, eos={0}).token_ids.item() != 0


# ---------------------------------------------------------------- logprobs


def test_logprobs_are_raw_log_softmax_with_sorted_top_k():
    logits = random_logits(3, seed=7)
    seqs = [make_seq(logprobs=3, temperature=0.5, repetition_penalty=1.7, output=[1, 2]),
            make_seq(logprobs=0, temperature=0.0, logit_bias={6: 30.0}),
            make_seq()]
    out = sample(seqs, logits)
    raw = torch.log_softmax(logits, -1)
    assert out.topk_ids.shape == (3, 3) and out.topk_values.shape == (3, 3)
    chosen = raw.gather(1, out.token_ids.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(out.logprobs, chosen, rtol=0, atol=1e-6)
    assert out.token_ids[1].item() == 6  # sampled after the bias, logprob before it
    torch.testing.assert_close(out.topk_values, raw.gather(1, out.topk_ids), rtol=0, atol=1e-6)
    assert torch.all(out.topk_values[:, :-1] >= out.topk_values[:, 1:])
    assert torch.equal(out.topk_ids[:, 0], logits.argmax(-1))


def test_logprobs_zero_gives_chosen_only():
    out = sample([make_seq(logprobs=0)], random_logits(1))
    assert out.logprobs.shape == (1,) and out.topk_ids is None


def test_chosen_only_logprobs_match_log_softmax():
    """logprobs=0 takes logit - logsumexp instead of a whole log_softmax: same values, for
    greedy, random and penalised rows alike (raw logits, before any processing)."""
    logits = random_logits(3, seed=5)
    seqs = [make_seq(logprobs=0, temperature=0), make_seq(logprobs=0, temperature=0.8, seed=1),
            make_seq(logprobs=0, temperature=0, presence_penalty=1.5, output=(4, 4))]
    out = sample(seqs, logits)
    want = torch.log_softmax(logits, dim=-1).gather(1, out.token_ids[:, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs, want)
    assert out.topk_ids is None


# ---------------------------------------------------------------- seeds


def _run(batch_factory, steps, sampler):
    """Drive a fake model for `steps` steps; every sequence appends its sampled token."""
    seqs = batch_factory()
    for _ in range(steps):
        logits = torch.stack([fake_model_logits(s) for s in seqs])  # [N, V]
        out = sample(seqs, logits, sampler)
        for seq, token_id in zip(seqs, out.token_ids.tolist()):
            seq.token_ids.append(token_id)
    return seqs


def test_seeded_sequence_is_reproducible_alone_or_in_any_batch():
    params = dict(seed=1234, temperature=1.3, top_p=0.95)
    alone = _run(lambda: [make_seq(**params)], 8, Sampler(seed=0))[0].output_token_ids

    def crowded():  # the seeded row sits in the middle, beside seeded and unseeded rows
        return [make_seq(seed=99), make_seq(top_k=5), make_seq(**params),
                make_seq(temperature=0.0, logprobs=2), make_seq(seed=7, min_p=0.1)]
    crowd = _run(crowded, 8, Sampler(seed=42))[2].output_token_ids
    last = _run(lambda: [make_seq(), make_seq(**params)], 8, Sampler(seed=5))[1]
    assert alone == crowd == last.output_token_ids
    other = _run(lambda: [make_seq(**{**params, "seed": 1235})], 8, Sampler(seed=0))[0]
    assert other.output_token_ids != alone


def test_siblings_differ_but_each_is_reproducible():
    def siblings():
        return [make_seq(seed=77, index=i) for i in range(3)]
    first = [s.output_token_ids for s in _run(siblings, 10, Sampler(seed=0))]
    again = [s.output_token_ids for s in _run(lambda: siblings()[::-1], 10, Sampler(seed=9))]
    assert first == again[::-1]
    assert len({tuple(t) for t in first}) == 3
    assert stream_seed(77, 0) == 77 and stream_seed(77, 1) != stream_seed(77, 2)


def test_generator_survives_preemption_and_is_released_at_the_end():
    params = dict(seed=5, temperature=1.0)
    straight = _run(lambda: [make_seq(**params)], 6, Sampler())[0].output_token_ids
    sampler = Sampler()
    seq = _run(lambda: [make_seq(**params)], 3, sampler)[0]
    # A preemption keeps the runner's generator (only finished ids release it): the
    # resumed sequence's stream just continues.
    seq = RequestState(seq.seq_id, 0, seq.sampling_params, list(seq.token_ids),
                       seq.num_prompt_tokens)
    for _ in range(3):
        out = sample([seq], fake_model_logits(seq).unsqueeze(0), sampler)
        seq.token_ids.append(out.token_ids.item())
    assert seq.output_token_ids == straight
    assert sampler.num_generators == 1
    sampler.release(seq.seq_id)
    sampler.release(seq.seq_id)  # idempotent
    assert sampler.num_generators == 0


# ---------------------------------------------------------------- no host sync on CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampler_does_not_sync_the_host_on_cuda():
    seqs = [make_seq(seed=3, top_p=0.9, logprobs=2, output=[4]), make_seq(top_k=4, min_p=0.1),
            make_seq(temperature=0.0, repetition_penalty=1.2, frequency_penalty=0.3,
                     presence_penalty=0.1, min_tokens=5, logit_bias={2: 1.0}, output=[1, 1])]
    logits = random_logits(3, vocab=50000).cuda()
    meta = SamplingMetadata.build(seqs, "cuda", eos_token_ids={0})
    sampler = Sampler()
    sampler(logits, meta)  # warm-up: generator creation, lazy CUDA init
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sampler(logits, meta)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.token_ids.is_cuda and math.isfinite(out.logprobs.sum().item())
