"""The engine's greedy output and logprobs equal transformers' (eager, fp32) token for token."""
from __future__ import annotations

import pytest

import tiny
from cormorant import LLM, SamplingParams

PROMPTS = [
    [5, 6, 7],
    [11, 200, 37, 45, 99, 8, 301, 17, 64],
    list(range(30, 30 + 40)),
    [(i * 37) % 500 + 3 for i in range(77)],
]
NEW_TOKENS = 32


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen2", "tiny_qwen3"])
def model_pair(request):
    path = request.getfixturevalue(request.param)
    llm = LLM(path, block_size=8, num_kv_blocks=128, max_num_batched_tokens=256)
    return llm, tiny.load_reference(path)


def _greedy(n=NEW_TOKENS, **kw):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def test_batch_and_single_match_transformers(model_pair):
    llm, ref = model_pair
    expected = [tiny.reference_greedy(ref, p, NEW_TOKENS) for p in PROMPTS]
    batched = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, _greedy())]
    single = [llm.generate([p], _greedy())[0].outputs[0].token_ids for p in PROMPTS]
    assert batched == expected
    assert single == expected


def test_logprobs_match_log_softmax(model_pair):
    llm, ref = model_pair
    out = llm.generate(PROMPTS[:2], _greedy(n=8, logprobs=3))
    for prompt, result in zip(PROMPTS[:2], out):
        completion = result.outputs[0]
        expected = tiny.reference_logprobs(ref, prompt, completion.token_ids)
        got = [lp.logprob for lp in completion.logprobs]
        assert got == pytest.approx(expected, abs=1e-4)
        for lp in completion.logprobs:  # greedy: the chosen token is the top alternative
            assert len(lp.top) == 3
            assert max(lp.top, key=lp.top.get) == lp.token_id


def test_chosen_only_logprobs_match_transformers(model_pair):
    """logprobs=0 (the chosen token alone: logit - logsumexp in the sampler, what drift
    monitoring asks for on every request) gives transformers' values too."""
    llm, ref = model_pair
    out = llm.generate(PROMPTS[:2], _greedy(n=8, logprobs=0))
    for prompt, result in zip(PROMPTS[:2], out):
        completion = result.outputs[0]
        expected = tiny.reference_logprobs(ref, prompt, completion.token_ids)
        assert [lp.logprob for lp in completion.logprobs] == pytest.approx(expected, abs=1e-4)
        assert all(lp.top == {} for lp in completion.logprobs)
        assert completion.cumulative_logprob == pytest.approx(sum(expected), abs=1e-3)


def test_prompt_logprobs_match(model_pair):
    llm, ref = model_pair
    prompt = PROMPTS[2]
    out = llm.generate([prompt], _greedy(n=1, prompt_logprobs=2))[0]
    assert out.prompt_logprobs[0] is None
    got = [lp.logprob for lp in out.prompt_logprobs[1:]]
    expected = tiny.reference_logprobs(ref, prompt[:1], prompt[1:])
    assert got == pytest.approx(expected, abs=1e-4)
