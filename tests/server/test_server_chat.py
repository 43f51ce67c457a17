"""POST /v1/chat/completions on the tiny random model, through the official openai client."""
from __future__ import annotations

import pytest

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"}]


def _stream(client, model, **kwargs):
    chunks = list(client.chat.completions.create(model=model, messages=kwargs.pop("messages",
                                                 MESSAGES), stream=True, **kwargs))
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                assert choice.index not in reasons
                reasons[choice.index] = choice.finish_reason
    return texts, reasons, chunks


def test_chat_shape(client, tiny_server):
    out = client.chat.completions.create(model=tiny_server.model, messages=MESSAGES,
                                         max_tokens=6, temperature=0,
                                         extra_body={"ignore_eos": True})
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.model == tiny_server.model and out.system_fingerprint
    message = out.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert out.choices[0].finish_reason == "length"
    tok = tiny_server.engine.tokenizer
    assert out.usage.prompt_tokens == len(tok.apply_chat_template(MESSAGES))
    assert out.usage.completion_tokens == 6


@pytest.mark.parametrize("n", [1, 2])
def test_chat_stream_equals_non_stream_with_seed(client, tiny_server, n):
    kwargs = dict(max_tokens=10, temperature=0.9, top_p=0.95, seed=99, n=n)
    full = client.chat.completions.create(model=tiny_server.model, messages=MESSAGES, **kwargs)
    texts, reasons, chunks = _stream(client, tiny_server.model, **kwargs)
    assert {c.index: c.message.content for c in full.choices} == texts
    assert {c.index: c.finish_reason for c in full.choices} == reasons
    # OpenAI's order per choice: role first, content deltas, then an empty delta + reason.
    for index in range(n):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert mine[-1].finish_reason is not None and not mine[-1].delta.content


def test_chat_stream_usage_and_parts(client, tiny_server):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                             {"type": "text", "text": "of France?"}]},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy?"}]
    _, _, chunks = _stream(client, tiny_server.model, messages=messages, max_tokens=5,
                           stream_options={"include_usage": True},
                           extra_body={"ignore_eos": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_logprobs(client, tiny_server):
    out = client.chat.completions.create(model=tiny_server.model, messages=MESSAGES,
                                         max_completion_tokens=4, temperature=0, logprobs=True,
                                         top_logprobs=2, extra_body={"ignore_eos": True})
    content = out.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)
    _, _, chunks = _stream(client, tiny_server.model, max_completion_tokens=4, temperature=0,
                           logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    streamed = [e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]


def test_chat_stop_and_max_tokens_unset(client, tiny_server):
    free = client.chat.completions.create(model=tiny_server.model, messages=MESSAGES,
                                          max_tokens=20, temperature=0,
                                          extra_body={"ignore_eos": True})
    text = free.choices[0].message.content
    stop = text[5:7]
    out = client.chat.completions.create(model=tiny_server.model, messages=MESSAGES,
                                         temperature=0, stop=stop,
                                         extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == text[: text.index(stop)]


def test_assistant_message_round_trip(client, tiny_server):
    # Appending a response's message object (as the SDK serializes it) must be accepted.
    first = client.chat.completions.create(model=tiny_server.model, messages=MESSAGES,
                                           max_tokens=3, temperature=0)
    messages = [*MESSAGES, first.choices[0].message, {"role": "user", "content": "Thanks"}]
    second = client.chat.completions.create(model=tiny_server.model, messages=messages,
                                            max_tokens=3, temperature=0)
    assert second.choices[0].message.role == "assistant"


def test_developer_role_and_response_format_text(client, tiny_server):
    out = client.chat.completions.create(
        model=tiny_server.model, max_tokens=2, response_format={"type": "text"},
        messages=[{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": "Hi"}], user="user-1234")
    assert out.choices[0].message.role == "assistant"
