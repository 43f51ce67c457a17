"""The real SmolLM2-135M-Instruct (embedded GGUF) behind the server: a real answer, and the
parameters that matter most on a model whose text means something."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

PARIS = [{"role": "user", "content": "What is the capital of France?"}]


def test_paris(smollm2_server):
    client = smollm2_server.client()
    out = client.chat.completions.create(model=smollm2_server.model, messages=PARIS,
                                         max_tokens=24, temperature=0)
    assert "Paris" in out.choices[0].message.content
    assert out.model == "SmolLM2-135M-Instruct"
    assert out.system_fingerprint.startswith("SmolLM2-135M-Instruct:")
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=smollm2_server.model, messages=PARIS, max_tokens=24, temperature=0, stream=True)
        if c.choices)
    assert streamed == out.choices[0].message.content


def test_seeded_sampling_stream_equals_non_stream(smollm2_server):
    client = smollm2_server.client()
    kwargs = dict(model=smollm2_server.model, messages=PARIS, max_tokens=16, temperature=0.8,
                  top_p=0.9, seed=2024, n=2, extra_body={"top_k": 40, "min_p": 0.02})
    full = client.chat.completions.create(**kwargs)
    texts = {0: "", 1: ""}
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {c.index: c.message.content for c in full.choices}


def test_stop_and_logprobs(smollm2_server):
    client = smollm2_server.client()
    out = client.chat.completions.create(model=smollm2_server.model, messages=PARIS,
                                         max_tokens=24, temperature=0, stop=["Paris"],
                                         logprobs=True, top_logprobs=3)
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and "Paris" not in choice.message.content
    assert all(len(e.top_logprobs) == 3 for e in choice.logprobs.content)


def test_completions_with_penalties(smollm2_server):
    client = smollm2_server.client()
    out = client.completions.create(model=smollm2_server.model,
                                    prompt="The capital of France is", max_tokens=8,
                                    temperature=0, frequency_penalty=0.5, presence_penalty=0.5,
                                    echo=True, extra_body={"repetition_penalty": 1.1})
    assert out.choices[0].text.startswith("The capital of France is")
    assert out.usage.completion_tokens <= 8
