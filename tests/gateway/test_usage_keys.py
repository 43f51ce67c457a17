"""Usage, request log and rate-limit metrics attributed to real API keys (a key database the
server reads), over real HTTP: each key's tokens land on its own usage rows, GET /v1/usage
needs the admin scope, the log line names the key, and 429s are counted by key id. Each test
runs against a server keeping usage in SQLite (in memory) and in a real PostgreSQL."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import httpx
import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import running_engine, running_server  # noqa: E402
from support import store_keys  # noqa: E402
from postgres_fixture import create_database, postgres_server  # noqa: E402,F401

MODEL = "tiny-keys"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def keyed(request, tiny_llama, tmp_path_factory):
    """A server reading a key database with an admin key, two inference keys (one limited to
    one request a minute) and a metrics-only key; usage in SQLite or in Postgres."""
    usage_db = None if request.param == "sqlite" else \
        create_database(request.getfixturevalue("postgres_server"))
    db = tmp_path_factory.mktemp("keys") / "keys.db"
    store, tokens, ids = store_keys(db, (("admin", {"admin", "inference"}, {}),
                                         ("alice", {"inference"}, {}),
                                         ("bob", {"inference"}, {"rpm": 1}),
                                         ("scraper", {"metrics"}, {})))
    store.close()
    with running_engine(tiny_llama) as llm, running_server(
            llm, served_model_name=MODEL, keys_db=str(db), usage_db=usage_db) as server:
        yield server, tokens, ids


def call(server, token: str, path: str = "/v1/completions", **body) -> httpx.Response:
    body = {"model": MODEL, "prompt": "Hello keys", "max_tokens": 3, **body}
    return httpx.post(server.url + path, json=body, timeout=60,
                      headers={"authorization": f"Bearer {token}"})


def usage(server, token: str, **params) -> httpx.Response:
    return httpx.get(server.url + "/v1/usage", params=params,
                     headers={"authorization": f"Bearer {token}"})


def test_usage_is_per_key_and_admin_only(keyed):
    server, tokens, ids = keyed
    served = {"alice": [call(server, tokens["alice"]).json()["usage"] for _ in range(2)],
              "admin": [call(server, tokens["admin"]).json()["usage"]]}
    deadline = time.monotonic() + 10
    while True:  # each record is written once its response has gone out
        rows = {r["key_id"]: r for r in usage(server, tokens["admin"]).json()["data"]}
        if rows.get(ids["alice"], {}).get("requests") == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for name, usages in served.items():
        row = rows[ids[name]]
        assert row["requests"] == len(usages) and row["model"] == MODEL
        assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
        assert row["completion_tokens"] == sum(u["completion_tokens"] for u in usages)
    only_alice = usage(server, tokens["admin"], key_id=ids["alice"]).json()["data"]
    assert [r["key_id"] for r in only_alice] == [ids["alice"]]
    # Scope: an inference key may not read everyone's usage; no key at all is 401.
    assert usage(server, tokens["alice"]).status_code == 403
    assert httpx.get(server.url + "/v1/usage").status_code == 401


def test_the_request_log_names_the_key(keyed):
    server, tokens, ids = keyed
    logger, lines = logging.getLogger("cormorant.requests"), _Lines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        response = httpx.post(server.url + "/v1/completions", timeout=60,
                              json={"model": MODEL, "prompt": "who am I", "max_tokens": 2},
                              headers={"authorization": f"Bearer {tokens['alice']}",
                                       "x-request-id": "whoami-1"})
        assert response.status_code == 200
        deadline = time.monotonic() + 10
        while not any("whoami-1" in text for text in lines.seen) and \
                time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    seen = lines.seen
    [line] = [json.loads(text) for text in seen if "whoami-1" in text]
    assert line["key_id"] == ids["alice"]
    assert tokens["alice"] not in json.dumps(line)  # the id, never the secret


def test_rate_limited_requests_are_counted_by_key(keyed):
    server, tokens, ids = keyed
    statuses = [call(server, tokens["bob"]).status_code for _ in range(3)]
    assert statuses[0] == 200 and statuses[1:] == [429, 429]
    metrics = httpx.get(server.url + "/metrics",
                        headers={"authorization": f"Bearer {tokens['scraper']}"}).text
    assert f'cormorant_rate_limited_requests_total{{key_id="{ids["bob"]}"}} 2.0' in metrics
    assert 'cormorant_requests_rejected_total{reason="rate_limit_exceeded",status="429"} 2.0' \
        in metrics
