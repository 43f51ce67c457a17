"""Backpressure: past the waiting-request or waiting-token budget, 503 with Retry-After; the
requests already admitted still complete."""
from __future__ import annotations

import httpx
import openai
import pytest

from server_helpers import ServerThread, assert_openai_error, start_engine, tiny_engine_config

MAX_WAITING = 2
MAX_WAITING_TOKENS = 300


@pytest.fixture(scope="module")
def small_server(tiny_llama):
    # Two running slots in the engine: whatever comes next waits, deterministically.
    llm = start_engine(tiny_engine_config(tiny_llama, max_num_seqs=2))
    server = ServerThread(llm, max_waiting_requests=MAX_WAITING,
                          max_waiting_prompt_tokens=MAX_WAITING_TOKENS).start()
    yield server
    server.stop()
    llm.shutdown()


def _open_stream(client, model, prompt, max_tokens=120):
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                       stream=True, extra_body={"ignore_eos": True})
    return stream, iter(stream)


def _finish(it) -> str | None:
    reason = None
    for chunk in it:
        for choice in chunk.choices:
            reason = choice.finish_reason or reason
    return reason


def _overloaded(server, prompt) -> httpx.Response:
    return httpx.post(server.url + "/v1/completions",
                      json={"model": server.model, "prompt": prompt, "max_tokens": 4})


def test_waiting_requests_limit(small_server):
    client = small_server.client()
    running = [_open_stream(client, small_server.model, [7, 8, 9]) for _ in range(2)]
    for _, it in running:
        next(it)  # both have produced output: they occupy the engine's two slots
    waiting = [_open_stream(client, small_server.model, [7, 8, 9]) for _ in range(MAX_WAITING)]
    response = _overloaded(small_server, [1, 2, 3])
    assert_openai_error(response, 503)
    assert int(response.headers["retry-after"]) >= 1
    with pytest.raises(openai.InternalServerError):  # the SDK's view of the same 503
        client.completions.create(model=small_server.model, prompt="x", max_tokens=2)
    assert [_finish(it) for _, it in running + waiting] == ["length"] * 4
    assert client.completions.create(model=small_server.model, prompt="x",
                                     max_tokens=2).choices[0].finish_reason


def test_waiting_prompt_tokens_limit(small_server):
    client = small_server.client()
    running = [_open_stream(client, small_server.model, [7, 8, 9]) for _ in range(2)]
    for _, it in running:
        next(it)
    big = _open_stream(client, small_server.model, [5] * 250, max_tokens=8)
    response = _overloaded(small_server, [6] * 100)  # 250 + 100 > 300 tokens waiting
    assert_openai_error(response, 503)
    assert "retry-after" in response.headers
    small = _overloaded(small_server, [6] * 20)  # fits in both budgets: admitted
    assert small.status_code == 200, small.text
    assert [_finish(it) for _, it in running + [big]] == ["length"] * 3
