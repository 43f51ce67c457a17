"""The response cache over real HTTP (issue #6): a hit equals the original response, streamed
and not; no hit across tenants; opt-out per request; no hit after a swap or reload; the
semantic cache reuses answers to similar prompts for requests that opt in."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx

from multi_model import admin

sys.path.insert(0, str(Path(__file__).parent.parent / "gateway"))
from redis_fixture import redis_server  # noqa: E402,F401  (a real redis-server)

CHAT = {"model": "tiny@1", "messages": [{"role": "user", "content": "cache me"}],
        "max_tokens": 12, "temperature": 0}


def _post(server, token: str, body: dict, path: str = "/v1/chat/completions",
          **headers) -> httpx.Response:
    response = httpx.post(server.url + path, json=body, timeout=300,
                          headers={"authorization": f"Bearer {token}", **headers})
    assert response.status_code == 200, response.text
    return response


def _stream_text(server, token: str, body: dict, path: str = "/v1/chat/completions"
                 ) -> tuple[httpx.Headers, str, list[dict]]:
    chunks = []
    with httpx.stream("POST", server.url + path, timeout=300,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}},
                      headers={"authorization": f"Bearer {token}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
        headers = r.headers
    text = "".join(_choice_text(c["choices"][0]) for c in chunks if c["choices"])
    return headers, text, chunks


def _choice_text(choice: dict) -> str:
    """A chat chunk's delta content or a completion chunk's text."""
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


def _same_answer(a: dict, b: dict) -> None:
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
    assert (a["model"], a["system_fingerprint"]) == (b["model"], b["system_fingerprint"])


def test_a_hit_equals_the_original_streamed_and_not(multi_server, multi_keys):
    body = {**CHAT, "messages": [{"role": "user", "content": "cache me, first"}]}
    miss = _post(multi_server, multi_keys.alice, body)
    assert miss.headers["x-cache"] == "miss"
    hit = _post(multi_server, multi_keys.alice, body)
    assert hit.headers["x-cache"] == "hit" and hit.headers["x-model-version"] == "tiny@1"
    _same_answer(hit.json(), miss.json())
    assert hit.json()["id"] != miss.json()["id"]
    # The same tenant with another key hits too; the streamed replay says the same.
    headers, text, chunks = _stream_text(multi_server, multi_keys.alice2, body)
    assert headers["x-cache"] == "hit"
    assert text == miss.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == miss.json()["usage"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def test_a_streamed_miss_is_stored_for_both_shapes(multi_server, multi_keys):
    body = {"model": "tiny@1", "prompt": "streamed first", "max_tokens": 10, "seed": 7,
            "temperature": 0.9}
    headers, text, _ = _stream_text(multi_server, multi_keys.alice, body, "/v1/completions")
    assert headers["x-cache"] == "miss"
    hit = _post(multi_server, multi_keys.alice, body, "/v1/completions")
    assert hit.headers["x-cache"] == "hit" and hit.json()["choices"][0]["text"] == text
    headers2, text2, _ = _stream_text(multi_server, multi_keys.alice, body, "/v1/completions")
    assert headers2["x-cache"] == "hit" and text2 == text


def test_no_hit_across_tenants_or_when_not_deterministic(multi_server, multi_keys):
    body = {**CHAT, "messages": [{"role": "user", "content": "tenant check"}]}
    _post(multi_server, multi_keys.alice, body)
    assert _post(multi_server, multi_keys.alice, body).headers["x-cache"] == "hit"
    assert _post(multi_server, multi_keys.bob, body).headers["x-cache"] == "miss"
    sampled = {**body, "temperature": 0.8}  # no seed: every answer may differ
    _post(multi_server, multi_keys.alice, sampled)
    assert _post(multi_server, multi_keys.alice, sampled).headers["x-cache"] == "miss"
    # Cache-Control: no-cache skips the lookup (and the answer is fresh, then stored again).
    assert _post(multi_server, multi_keys.alice, body,
                 **{"cache-control": "no-cache"}).headers["x-cache"] == "miss"


def test_no_hit_after_a_swap_or_a_reload_of_changed_files(multi_server, multi_keys):
    body = {"model": "tiny@2", "prompt": "swap check", "max_tokens": 8, "temperature": 0}
    _post(multi_server, multi_keys.alice, body, "/v1/completions")
    assert _post(multi_server, multi_keys.alice, body,
                 "/v1/completions").headers["x-cache"] == "hit"
    # A reload of unchanged files is the same weights: its answers stay valid.
    assert admin(multi_server, multi_keys, "POST", "/admin/models/tiny@2/reload").status_code \
        == 200
    assert _post(multi_server, multi_keys.alice, body,
                 "/v1/completions").headers["x-cache"] == "hit"
    # Files rewritten on disk, then reloaded: nothing cached before is served.
    config = multi_server.app.state.cormorant.registry.settings.roots[0] / "tiny-qwen3" \
        / "config.json"
    os.utime(config, ns=(time.time_ns(), time.time_ns()))
    assert admin(multi_server, multi_keys, "POST", "/admin/models/tiny@2/reload").status_code \
        == 200
    assert _post(multi_server, multi_keys.alice, body,
                 "/v1/completions").headers["x-cache"] == "miss"
    # A swap: the alias now answers with another version, whose cache starts empty.
    alias = {"model": "swapped", "prompt": "alias swap", "max_tokens": 8, "temperature": 0}
    assert admin(multi_server, multi_keys, "PUT", "/admin/aliases/swapped",
                 {"targets": {"tiny@1": 1}, "unload_replaced": False}).status_code == 200
    _post(multi_server, multi_keys.alice, alias, "/v1/completions")
    assert _post(multi_server, multi_keys.alice, alias,
                 "/v1/completions").headers["x-cache"] == "hit"
    assert admin(multi_server, multi_keys, "PUT", "/admin/aliases/swapped",
                 {"targets": {"tiny@2": 1}, "unload_replaced": False}).status_code == 200
    after = _post(multi_server, multi_keys.alice, alias, "/v1/completions")
    assert after.headers["x-cache"] == "miss" and after.json()["model"] == "tiny@2"


def test_semantic_cache_reuses_similar_prompts_on_request(multi_server, multi_keys):
    ask = {"model": "chat", "max_tokens": 8, "temperature": 0.7,
           "messages": [{"role": "user", "content": "What is the capital city of France?"}]}
    similar = {**ask, "messages": [{"role": "user",
                                    "content": "What's the capital city of France?"}]}
    other = {**ask, "messages": [{"role": "user", "content": "How do I bake bread?"}]}
    first = _post(multi_server, multi_keys.alice, ask, **{"x-semantic-cache": "0.9"})
    assert first.headers["x-cache"] == "miss"
    hit = _post(multi_server, multi_keys.alice, similar, **{"x-semantic-cache": "0.9"})
    assert hit.headers["x-cache"] == "hit" and float(hit.headers["x-cache-similarity"]) >= 0.9
    assert hit.json()["choices"] == first.json()["choices"]
    assert _post(multi_server, multi_keys.alice, other,
                 **{"x-semantic-cache": "0.9"}).headers["x-cache"] == "miss"
    # Without opting in, a similar prompt is generated afresh; another tenant never hits.
    assert _post(multi_server, multi_keys.alice, similar).headers["x-cache"] == "miss"
    assert _post(multi_server, multi_keys.bob, similar,
                 **{"x-semantic-cache": "0.9"}).headers["x-cache"] == "miss"
    bad = httpx.post(multi_server.url + "/v1/chat/completions", json=ask, timeout=60,
                     headers={"authorization": f"Bearer {multi_keys.alice}",
                              "x-semantic-cache": "2"})
    assert bad.status_code == 400


def test_replicas_share_the_cache_through_redis(tiny_llm, redis_server):
    """Two servers of the same weights (replicas) configured with one Redis: an answer
    computed by one is a hit on the other."""
    from server_helpers import ServerThread

    common = {"response_cache": True, "response_cache_redis_url": redis_server.url,
              "model_version": f"w{time.time_ns()}"}  # a digest of this test's own
    first, second = ServerThread(tiny_llm, **common).start(), \
        ServerThread(tiny_llm, **common).start()
    try:
        body = {"model": first.model, "prompt": "replicas", "max_tokens": 6, "temperature": 0}
        miss = httpx.post(first.url + "/v1/completions", json=body, timeout=60)
        hit = httpx.post(second.url + "/v1/completions", json=body, timeout=60)
        assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("miss", "hit")
        assert hit.json()["choices"] == miss.json()["choices"]
    finally:
        first.stop()
        second.stop()
