"""Tenant isolation of the KV prefix cache over HTTP (issue 21): the real app with a key
database and a tiny real engine, driven with the official openai client. A key never gets
cached tokens from another key's prompt (the timing side channel), keys of one cache group do,
and a request's own `cache_salt` separates requests of one key."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from cormorant.server.app import build_app
from cormorant.server.config import ServerConfig
from cormorant.server.launch import uvicorn_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import tiny_engine_fixture  # noqa: E402
from support import store_keys  # noqa: E402

MODEL = "tiny-salt"
TEXT = "The quick brown fox jumps over the lazy dog. " * 6


engine = tiny_engine_fixture("engine")


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory, server_thread):
    """`.keys`: role -> token; a and b have their own namespaces, g1 and g2 share "team"."""
    db = tmp_path_factory.mktemp("prefix-isolation") / "keys.db"
    store, keys, _ = store_keys(db, [(role, {"inference"}, {"cache_group": group}) for role, group
                                     in (("a", ""), ("b", ""), ("g1", "team"), ("g2", "team"))])
    config = ServerConfig(served_model_name=MODEL, keys_db=str(db), keys_refresh_s=0.0,
                          response_cache=True)
    server = server_thread(config=uvicorn_config(build_app(engine, config), config, "warning"))
    server.start()
    server.keys = keys
    yield server
    server.stop()
    store.close()


@pytest.fixture(scope="module")
def keyless(engine, server_thread):
    """The same engine behind an app without keys (a laptop)."""
    config = ServerConfig(served_model_name=MODEL)
    server = server_thread(config=uvicorn_config(build_app(engine, config), config, "warning"))
    server.start()
    server.keys = {"anyone": "unused"}
    yield server
    server.stop()


def cached(server, role: str, prompt: str, salt: str | None = None, chat: bool = False) -> int:
    """cached_tokens of one request (sampled, so the response cache never answers it)."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.keys[role],
                           max_retries=0)
    extra = {} if salt is None else {"cache_salt": salt}
    if chat:
        out = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=1,
            temperature=1.0, extra_body=extra)
    else:
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1,
                                        temperature=1.0, extra_body=extra)
    return out.usage.prompt_tokens_details.cached_tokens


def fresh() -> str:
    return f"{uuid.uuid4().hex} {TEXT}"


@pytest.mark.parametrize("chat", [False, True])
def test_a_key_never_gets_another_keys_cached_prefix(server, chat):
    prompt = fresh()
    assert cached(server, "a", prompt, chat=chat) == 0
    assert cached(server, "b", prompt, chat=chat) == 0  # a's prompt is invisible to b
    assert cached(server, "b", prompt, chat=chat) > 0  # b's own repeat is served
    assert cached(server, "a", prompt, chat=chat) > 0
    assert cached(server, "g1", prompt, chat=chat) == 0


def test_keys_of_one_cache_group_share_their_prefixes(server):
    prompt = fresh()
    assert cached(server, "g1", prompt) == 0
    assert cached(server, "g2", prompt) > 0
    assert cached(server, "a", prompt) == 0


def test_a_request_cache_salt_separates_requests_of_one_key(server):
    prompt = fresh()
    assert cached(server, "a", prompt, salt="conversation-1") == 0
    assert cached(server, "a", prompt, salt="conversation-1") > 0
    assert cached(server, "a", prompt, salt="conversation-2") == 0
    assert cached(server, "a", prompt) == 0  # the key's plain namespace is another one
    # Another key sending the same salt stays in its own namespace.
    assert cached(server, "b", prompt, salt="conversation-1") == 0
    assert cached(server, "g2", prompt, salt="conversation-1", chat=True) == 0
    assert cached(server, "g1", prompt, salt="conversation-1", chat=True) > 0


@pytest.mark.parametrize("salt", ["", "x" * 257, 5, ["a"]])
def test_cache_salt_is_validated(server, salt):
    response = httpx.post(f"{server.url}/v1/completions", timeout=30,
                          headers={"Authorization": f"Bearer {server.keys['a']}"},
                          json={"model": MODEL, "prompt": "hi", "max_tokens": 1,
                                "cache_salt": salt})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "cache_salt"


def test_without_keys_everyone_shares_one_namespace(keyless, server):
    prompt = fresh()
    assert cached(keyless, "anyone", prompt) == 0
    assert cached(keyless, "anyone", prompt) > 0
    assert cached(keyless, "anyone", prompt, salt="mine") == 0
    assert cached(keyless, "anyone", prompt, salt="mine") > 0
    assert cached(server, "a", prompt) == 0  # a keyed caller on the same engine: its own
