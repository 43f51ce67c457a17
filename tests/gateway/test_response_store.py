"""The Responses API's conversation store on SQLite (a file, kept across reopening) and a real
PostgreSQL server: per-key reads (another key sees nothing), expiry, and ids that never
collide across keys."""
from __future__ import annotations

import pytest

from cormorant.gateway.telemetry.response_store import ResponseStore
from postgres_fixture import postgres_server, postgres_url  # noqa: F401  (fixtures)

CONVERSATION = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "f", "arguments": "{}"}}]}]


def _check(store: ResponseStore) -> None:
    store.put("resp_1", "alice", CONVERSATION)
    assert store.get("resp_1", "alice") == CONVERSATION
    assert store.get("resp_1", "bob") is None
    assert store.get("resp_missing", "alice") is None
    with pytest.raises(Exception):
        store.put("resp_1", "bob", [])  # an id is one response, whoever asks
    assert store.get("resp_1", "alice") == CONVERSATION


def test_sqlite_file(tmp_path):
    path = str(tmp_path / "usage.db")
    store = ResponseStore(path)
    _check(store)
    store.close()
    reopened = ResponseStore(path)
    assert reopened.get("resp_1", "alice") == CONVERSATION
    reopened.close()


def test_expiry():
    store = ResponseStore(None, ttl_s=0.0)
    store.put("resp_1", "alice", CONVERSATION)
    assert store.get("resp_1", "alice") is None
    store.close()


def test_postgres(postgres_url):  # noqa: F811
    store = ResponseStore(postgres_url)
    _check(store)
    store.close()
    reopened = ResponseStore(postgres_url)
    assert reopened.get("resp_1", "alice") == CONVERSATION
    reopened.close()
