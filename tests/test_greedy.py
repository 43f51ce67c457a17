"""One definition of greedy: what the engine samples by argmax is what the response cache
treats as deterministic, and a left-out temperature means the one default."""
from __future__ import annotations

import pytest

from cormorant.gateway.caching.response_cache import is_deterministic
from cormorant.sampling_params import DEFAULT_TEMPERATURE, SamplingParams, is_greedy


@pytest.mark.parametrize("temperature", [0.0, 0, 1e-6, 5e-6, 1e-5, 0.5, None])
def test_the_cache_and_the_sampler_agree(temperature):
    params = SamplingParams() if temperature is None else SamplingParams(temperature=temperature)
    assert params.is_greedy == is_greedy(temperature)
    assert is_deterministic(temperature, None) == params.is_greedy
    assert is_deterministic(temperature, 3)


def test_tiny_temperatures_are_greedy_and_the_default_is_not():
    assert is_greedy(1e-6) and not is_greedy(1e-5) and not is_greedy(None)
    assert SamplingParams().temperature == DEFAULT_TEMPERATURE and not is_greedy(None)


def test_the_engine_decodes_a_tiny_temperature_greedily(tiny_llama):
    from cormorant import LLM

    llm = LLM(tiny_llama, num_kv_blocks=32, seed=5)
    greedy, tiny = (llm.generate("The quick", SamplingParams(temperature=t, max_tokens=10,
                                                             ignore_eos=True))[0]
                    for t in (0.0, 1e-6))
    assert tiny.outputs[0].token_ids == greedy.outputs[0].token_ids
    assert is_deterministic(1e-6, None)  # so the cache may answer it
