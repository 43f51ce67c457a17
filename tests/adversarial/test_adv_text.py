"""Hostile text: a lone UTF-16 surrogate anywhere a string goes is a 400 with our own message
on every route, and a multi-megabyte prompt is refused by its size at once, before any
tokenization, while /health keeps answering."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from server_helpers import TINY_MAX_MODEL_LEN, assert_openai_error

M = "<model>"
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
LONE = "\ud800"

# (id, path, body, param): each body carries one lone surrogate.
CASES = [
    ("completions-prompt", COMP, {"model": M, "prompt": f"a{LONE}b", "max_tokens": 2},
     "prompt"),
    ("completions-prompt-list", COMP, {"model": M, "prompt": ["ok", LONE], "max_tokens": 2},
     "prompt[1]"),
    ("completions-stop", COMP, {"model": M, "prompt": "a", "stop": [f"x{LONE}"]}, "stop[0]"),
    ("completions-user", COMP, {"model": M, "prompt": "a", "user": LONE}, "user"),
    ("chat-content", CHAT, {"model": M, "messages": [{"role": "user", "content": LONE}]},
     "messages[0].content"),
    ("chat-content-part", CHAT, {"model": M, "messages": [
        {"role": "user", "content": [{"type": "text", "text": f"hi {LONE}"}]}]},
     "messages[0].content[0].text"),
    ("chat-name", CHAT, {"model": M, "messages": [{"role": "user", "content": "hi",
                                                    "name": LONE}]}, "messages[0].name"),
    ("chat-stop", CHAT, {"model": M, "messages": [{"role": "user", "content": "hi"}],
                         "stop": LONE}, "stop"),
    ("tokenize-prompt", "/tokenize", {"model": M, "prompt": f"x{LONE}"}, "prompt"),
    ("tokenize-messages", "/tokenize", {"model": M, "messages": [
        {"role": "user", "content": f"{LONE}x"}]}, "messages[0].content"),
    ("model-name", COMP, {"model": f"m{LONE}", "prompt": "a"}, "model"),
    ("embeddings", "/v1/embeddings", {"model": "tiny-classifier", "input": f"a{LONE}"},
     "input"),
    ("embeddings-list", "/v1/embeddings", {"model": "tiny-classifier", "input": ["a", LONE]},
     "input[1]"),
    ("classify", "/v1/classify", {"model": "tiny-classifier", "input": [LONE]}, "input[0]"),
    ("low-surrogate", COMP, {"model": M, "prompt": "\udc00", "max_tokens": 2}, "prompt"),
    ("logit-bias-key", COMP, {"model": M, "prompt": "a", "logit_bias": {LONE: 1}},
     "logit_bias"),
]


@pytest.mark.parametrize("path, body, param", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lone_surrogate_is_a_400_with_our_message(alive, path, body, param):
    text = json.dumps(body).replace(json.dumps(M)[1:-1], alive.model)  # ASCII: "\ud800"
    assert "\\ud800" in text or "\\udc00" in text
    response = httpx.post(alive.url + path, content=text,
                          headers={"content-type": "application/json"}, timeout=30)
    error = assert_openai_error(response, 400, param)
    assert error["code"] == "invalid_encoding"
    assert "surrogate" in error["message"] and "TextInputSequence" not in error["message"]


def test_surrogate_pairs_are_valid_text(alive):
    # "\ud83d\ude00" is one emoji in JSON: not refused.
    text = json.dumps({"model": alive.model, "prompt": "smile \U0001F600", "max_tokens": 2})
    assert "\\ud83d\\ude00" in text
    response = httpx.post(alive.url + COMP, content=text,
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 200, response.text


def _health_latencies(url: str, busy: threading.Thread) -> list[float]:
    latencies = []
    while busy.is_alive():
        start = time.monotonic()
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.02)
    return latencies


def test_huge_prompt_is_refused_by_size_while_health_answers(alive):
    prompt = "hello world " * 340_000  # 4 MB: under the body limit, ~3.7M tokens
    result = {}

    def send():
        start = time.monotonic()
        result["response"] = httpx.post(alive.url + COMP, timeout=120, json={
            "model": alive.model, "prompt": prompt, "max_tokens": 2})
        result["elapsed"] = time.monotonic() - start

    busy = threading.Thread(target=send)
    busy.start()
    latencies = _health_latencies(alive.url, busy)
    busy.join()
    error = assert_openai_error(result["response"], 400, "prompt")
    assert error["code"] == "context_length_exceeded"
    assert f"maximum context length is {TINY_MAX_MODEL_LEN} tokens" in error["message"]
    # Tokenizing all of it took ~6 s on an idle machine; the size alone proves it too long.
    assert result["elapsed"] < 2.5, result["elapsed"]
    assert max(latencies, default=0.0) < 2.0, latencies
