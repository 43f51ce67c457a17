"""POST /v1/completions on the tiny random model, through the official openai client."""
from __future__ import annotations

import httpx
import pytest

from server_helpers import TINY_MAX_MODEL_LEN

PROMPT = "The quick brown fox"


def _stream_text(client, model, **kwargs) -> tuple[dict[int, str], dict[int, str], list]:
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    chunks = list(client.completions.create(model=model, stream=True, **kwargs))
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason is not None:
                assert choice.index not in reasons, "finish_reason sent twice"
                reasons[choice.index] = choice.finish_reason
    return texts, reasons, chunks


def test_completion_shape_and_usage(client, tiny_server):
    out = client.completions.create(model=tiny_server.model, prompt=PROMPT, max_tokens=8,
                                    temperature=0, extra_body={"ignore_eos": True})
    assert out.object == "text_completion"
    assert out.id.startswith("cmpl-")
    assert out.model == tiny_server.model
    assert tiny_server.model in out.system_fingerprint and "cormorant" in out.system_fingerprint
    assert len(out.choices) == 1 and out.choices[0].index == 0
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 8
    assert out.usage.prompt_tokens == len(tiny_server.engine.tokenizer.encode(PROMPT))
    assert out.usage.total_tokens == out.usage.prompt_tokens + 8


def test_default_max_tokens_is_16(client, tiny_server):
    out = client.completions.create(model=tiny_server.model, prompt=PROMPT, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16


def test_default_max_tokens_clamped_to_context(client, tiny_server):
    # No max_tokens: the default is clamped to what the context has left, not refused.
    ids = [5] * (TINY_MAX_MODEL_LEN - 3)
    out = client.completions.create(model=tiny_server.model, prompt=ids, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 3
    assert out.choices[0].finish_reason == "length"


@pytest.mark.parametrize("n", [1, 3])
def test_stream_equals_non_stream_with_seed(client, tiny_server, n):
    kwargs = dict(prompt=PROMPT, max_tokens=12, temperature=1.0, seed=1234, n=n)
    full = client.completions.create(model=tiny_server.model, **kwargs)
    texts, reasons, chunks = _stream_text(client, tiny_server.model, **kwargs)
    assert {c.index: c.text for c in full.choices} == texts
    assert {c.index: c.finish_reason for c in full.choices} == reasons
    assert all(len(chunk.choices) == 1 for chunk in chunks)  # one choice per chunk, as OpenAI
    assert len({chunk.id for chunk in chunks}) == 1


def test_seed_reproducible_and_n_choices_differ(client, tiny_server):
    kwargs = dict(model=tiny_server.model, prompt=PROMPT, max_tokens=16, temperature=1.0,
                  seed=7, n=4, extra_body={"ignore_eos": True})
    a = client.completions.create(**kwargs)
    b = client.completions.create(**kwargs)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert sorted(c.index for c in a.choices) == [0, 1, 2, 3]
    assert len({c.text for c in a.choices}) > 1
    assert a.usage.completion_tokens == 64


def test_batch_prompts_and_token_id_prompts(client, tiny_server):
    tok = tiny_server.engine.tokenizer
    out = client.completions.create(model=tiny_server.model, prompt=["Hello", "What is"],
                                    max_tokens=4, n=2, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert out.usage.prompt_tokens == len(tok.encode("Hello")) + len(tok.encode("What is"))
    assert out.usage.completion_tokens == 16
    by_text = client.completions.create(model=tiny_server.model, prompt="What is", max_tokens=4,
                                        temperature=0)
    by_ids = client.completions.create(model=tiny_server.model, prompt=tok.encode("What is"),
                                       max_tokens=4, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert out.choices[2].text == by_text.choices[0].text  # greedy: n copies agree


def test_logprobs(client, tiny_server):
    out = client.completions.create(model=tiny_server.model, prompt=PROMPT, max_tokens=5,
                                    logprobs=3, temperature=0, extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    # Offsets advance by each token's text (a random model emits specials and byte pieces,
    # so the joined tokens need not equal the skip-special-tokens text).
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    for value, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and 1 <= len(top) <= 3
        # greedy: the chosen token is the likeliest
        assert value == pytest.approx(max(top.values()), abs=1e-4)


def test_echo_with_logprobs(client, tiny_server):
    out = client.completions.create(model=tiny_server.model, prompt=PROMPT, max_tokens=3,
                                    echo=True, logprobs=1, temperature=0,
                                    extra_body={"ignore_eos": True})
    choice = out.choices[0]
    assert choice.text.startswith(PROMPT)
    num_prompt = out.usage.prompt_tokens
    assert len(choice.logprobs.tokens) == num_prompt + 3
    assert choice.logprobs.token_logprobs[0] is None  # nothing predicts the first token
    assert all(v is not None for v in choice.logprobs.token_logprobs[1:])
    streamed, _, _ = _stream_text(client, tiny_server.model, prompt=PROMPT, max_tokens=3,
                                  echo=True, temperature=0, extra_body={"ignore_eos": True})
    assert streamed[0] == choice.text


def test_stop_string(client, tiny_server):
    free = client.completions.create(model=tiny_server.model, prompt=PROMPT, max_tokens=24,
                                     temperature=0, extra_body={"ignore_eos": True})
    text = free.choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), text
    out = client.completions.create(model=tiny_server.model, prompt=PROMPT, max_tokens=24,
                                    temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == text[: text.index(stop)]
    streamed, reasons, _ = _stream_text(client, tiny_server.model, prompt=PROMPT, max_tokens=24,
                                        temperature=0, stop=stop,
                                        extra_body={"ignore_eos": True})
    assert streamed[0] == out.choices[0].text and reasons[0] == "stop"


def test_stream_include_usage(client, tiny_server):
    _, _, chunks = _stream_text(client, tiny_server.model, prompt=PROMPT, max_tokens=6, n=2,
                                temperature=0, stream_options={"include_usage": True},
                                extra_body={"ignore_eos": True})
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_request_id_header_and_raw_sse(tiny_server):
    body = {"model": tiny_server.model, "prompt": PROMPT, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", tiny_server.url + "/v1/completions", json=body,
                      headers={"x-request-id": "my-trace-42"}) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "my-trace-42"
        assert response.headers["x-system-fingerprint"].startswith(tiny_server.model + ":")
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    generated = httpx.post(tiny_server.url + "/v1/completions",
                           json={**body, "stream": False}).headers["x-request-id"]
    assert generated.startswith("req-")
