"""Reasoning output over HTTP on a tiny model whose chat template opens a think block (as
Qwen3-Thinking's and DeepSeek-R1's do): the whole output is reasoning_content, equal token for
token to the raw completion of the same prompt, streamed as reasoning deltas; with
`chat_template_kwargs: {"enable_thinking": false}` the template closes the block and the
output is plain content."""
from __future__ import annotations

import shutil

import httpx
import pytest

from server_helpers import running_engine, running_server

THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}")
NO_EOS = {"ignore_eos": True}  # the random model may end at once; 12 tokens of text instead
ASK = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("thinking") / "model"
    shutil.copytree(tiny_llama, path)
    (path / "chat_template.jinja").write_text(THINKING_TEMPLATE)
    with running_engine(str(path), max_model_len=2048) as llm, running_server(llm) as server:
        yield server


def _raw_completion(server, **template_kwargs) -> str:
    """The same prompt's completion through /v1/completions, as token ids."""
    ids = httpx.post(server.url + "/tokenize", json={"messages": ASK, **template_kwargs},
                     timeout=30).json()["tokens"]
    client = server.client()
    return client.completions.create(model=server.model, prompt=ids, max_tokens=12,
                                     temperature=0, extra_body=NO_EOS).choices[0].text


def test_reasoning_content(server):
    client = server.client()
    out = client.chat.completions.create(model=server.model, messages=ASK, max_tokens=12,
                                         temperature=0, extra_body=NO_EOS)
    message = out.choices[0].message
    raw = _raw_completion(server)
    assert raw.strip() and "</think>" not in raw  # a random model never closes it: all of it is reasoning
    assert message.reasoning_content == raw.strip("\n") and message.content == ""
    reasoning = content = ""
    for chunk in client.chat.completions.create(model=server.model, messages=ASK,
                                                max_tokens=12, temperature=0, stream=True,
                                                extra_body=NO_EOS):
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
    assert reasoning.strip("\n") == message.reasoning_content and content == ""


def test_enable_thinking_false(server):
    client = server.client()
    out = client.chat.completions.create(
        model=server.model, messages=ASK, max_tokens=12, temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, **NO_EOS})
    message = out.choices[0].message
    assert getattr(message, "reasoning_content", None) is None
    thinking = client.chat.completions.create(model=server.model, messages=ASK, max_tokens=1)
    # The closed think block is in the prompt: more prompt tokens than the open one.
    assert out.usage.prompt_tokens > thinking.usage.prompt_tokens
    raw = _raw_completion(server, chat_template_kwargs={"enable_thinking": False})
    assert raw.strip() and message.content == raw  # (this prompt's greedy output has text)
