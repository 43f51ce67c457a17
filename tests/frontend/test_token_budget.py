"""The per-step token budget when none is set: 512 on the CPU (so that one step of a long prompt
stays short on a slow machine, issue #21), 2048 on a GPU; a set value is kept; chunking the
prefill to that budget changes no output token."""
from __future__ import annotations

from cormorant import LLM, SamplingParams
from cormorant.config import (CPU_MAX_NUM_BATCHED_TOKENS, GPU_MAX_NUM_BATCHED_TOKENS,
                              default_max_num_batched_tokens)


def test_the_default_budget_is_by_device():
    assert default_max_num_batched_tokens("cpu") == CPU_MAX_NUM_BATCHED_TOKENS == 512
    assert default_max_num_batched_tokens("cuda") == GPU_MAX_NUM_BATCHED_TOKENS == 2048


def test_a_long_prompt_is_prefilled_in_short_steps_with_the_same_tokens(tiny_llama):
    prompt = [[(7 * i) % 500 + 3 for i in range(1500)]]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    chunked = LLM(tiny_llama, device="cpu", num_kv_blocks=256)
    assert chunked.config.scheduler.max_num_batched_tokens == 512
    steps_before = chunked.engine.steps
    out = chunked.generate(prompt, params)[0].outputs[0].token_ids
    assert chunked.engine.steps - steps_before >= 3 + 7  # ceil(1500 / 512) prefill steps
    whole = LLM(tiny_llama, device="cpu", num_kv_blocks=256, max_num_batched_tokens=2048)
    assert whole.config.scheduler.max_num_batched_tokens == 2048  # a set value is kept
    assert whole.generate(prompt, params)[0].outputs[0].token_ids == out
