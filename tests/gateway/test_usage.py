"""Usage records: the SQLite store (batched off the event loop, summed by key, model and UTC
day, persistent on disk) and GET /v1/usage over real HTTP against the real app and a tiny
real engine."""
from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import httpx
import pytest

from cormorant.gateway.usage import (UsageEvent, UsageQuery, open_usage_store, utc_day)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import ServerThread, assert_openai_error, start_engine  # noqa: E402
from server_helpers import tiny_engine_config  # noqa: E402

MODEL = "tiny-usage"


def event(day="2026-01-01", key="k1", model="m", version="v1", p=10, c=5, cached=0,
          failed=False) -> UsageEvent:
    return UsageEvent(day, key, model, version, p, c, cached, failed)


# --- the store --------------------------------------------------------------------------------

def test_store_sums_by_day_key_and_model():
    store = open_usage_store(None)
    try:
        for e in (event(), event(p=1, c=2, cached=1), event(version="v2", failed=True),
                  event(key="k2"), event(model="other"), event(day="2026-01-02")):
            store.record(e)
        rows = store.query(UsageQuery()).result(5)
        assert rows[0] == {"day": "2026-01-01", "key_id": "k1", "model": "m", "requests": 3,
                           "failed_requests": 1, "prompt_tokens": 21, "completion_tokens": 12,
                           "cached_tokens": 1}  # model versions are summed
        assert [(r["day"], r["key_id"], r["model"]) for r in rows] == [
            ("2026-01-01", "k1", "m"), ("2026-01-01", "k1", "other"), ("2026-01-01", "k2", "m"),
            ("2026-01-02", "k1", "m")]
        assert len(store.query(UsageQuery(key_id="k2")).result(5)) == 1
        assert len(store.query(UsageQuery(model="other")).result(5)) == 1
        only_2nd = store.query(UsageQuery(start_day="2026-01-02", end_day="2026-01-02"))
        assert [r["day"] for r in only_2nd.result(5)] == ["2026-01-02"]
    finally:
        store.close()


def test_recording_never_waits_for_the_database(tmp_path):
    store = open_usage_store(str(tmp_path / "usage.db"))
    try:
        started = time.perf_counter()
        for i in range(20_000):
            store.record(event(key=f"k{i % 7}", p=1, c=2))
        enqueue_s = time.perf_counter() - started
        rows = store.query(UsageQuery()).result(30)  # queued behind every write
        assert sum(r["requests"] for r in rows) == 20_000
        assert sum(r["completion_tokens"] for r in rows) == 40_000
        # 20k single-row transactions on disk would take seconds; enqueuing takes milliseconds.
        assert enqueue_s < 1.0, enqueue_s
    finally:
        store.close()


def test_a_file_database_persists(tmp_path):
    path = str(tmp_path / "nested" / "usage.db")  # the folder is created
    store = open_usage_store(path)
    store.record(event())
    store.close()
    reopened = open_usage_store(path)
    try:
        assert reopened.query(UsageQuery()).result(5)[0]["requests"] == 1
    finally:
        reopened.close()


def test_postgres_is_refused_not_faked():
    with pytest.raises(NotImplementedError, match="Postgres"):
        open_usage_store("postgresql://user@db/usage")


def test_an_unusable_path_fails_at_open(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        open_usage_store(str(blocker / "usage.db"))  # its "folder" is a file


# --- GET /v1/usage ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_llama):
    llm = start_engine(tiny_engine_config(tiny_llama))
    yield llm
    llm.shutdown()


def usage_rows(server, **params) -> list[dict]:
    response = httpx.get(server.url + "/v1/usage", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["has_more"] is False
    return body["data"]


def wait_for_requests(server, count: int) -> dict:
    """Records are written when each response has gone out; poll until `count` are in."""
    deadline = time.monotonic() + 10
    while True:
        rows = usage_rows(server)
        if rows and rows[0]["requests"] >= count or time.monotonic() > deadline:
            return rows[0] if rows else {}
        time.sleep(0.05)


def test_usage_endpoint_sums_what_was_served(engine, tmp_path):
    db = str(tmp_path / "usage.db")
    server = ServerThread(engine, served_model_name=MODEL, usage_db=db).start()
    try:
        client = server.client()
        first = client.completions.create(model=MODEL, prompt="Count me", max_tokens=3)
        second = client.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=2)
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            stream=True, stream_options={"include_usage": True})
        third = [chunk.usage for chunk in stream if chunk.usage][0]
        httpx.post(server.url + "/v1/completions", json={"model": "nope", "prompt": "x"})
        row = wait_for_requests(server, 3)
        usages = (first.usage, second.usage, third)
        assert row == {
            "object": "usage.daily", "day": utc_day(), "key_id": "anonymous", "model": MODEL,
            "requests": 3, "failed_requests": 0,
            "prompt_tokens": sum(u.prompt_tokens for u in usages),
            "completion_tokens": sum(u.completion_tokens for u in usages),
            "cached_tokens": sum(u.prompt_tokens_details.cached_tokens for u in usages),
            "total_tokens": sum(u.total_tokens for u in usages)}
        assert usage_rows(server, model="someone-else") == []
        assert usage_rows(server, key_id="anonymous", model=MODEL) == [row]
        tomorrow = (dt.date.fromisoformat(utc_day()) + dt.timedelta(days=1)).isoformat()
        assert usage_rows(server, start_date=tomorrow) == []
        assert usage_rows(server, end_date=utc_day()) == [row]
    finally:
        server.stop()
    # A new server on the same database still knows.
    again = ServerThread(engine, served_model_name=MODEL, usage_db=db).start()
    try:
        assert usage_rows(again)[0]["requests"] == 3
    finally:
        again.stop()


def test_an_abandoned_stream_is_a_failed_request(engine):
    server = ServerThread(engine, served_model_name=MODEL).start()
    try:
        stream = server.client().completions.create(
            model=MODEL, prompt="Leave early", max_tokens=300, stream=True,
            extra_body={"ignore_eos": True})
        next(iter(stream))
        stream.close()
        row = wait_for_requests(server, 1)
        assert row["requests"] == 1 and row["failed_requests"] == 1
        assert 0 < row["completion_tokens"] < 300  # what was generated before the abort
    finally:
        server.stop()


def test_usage_query_validation(engine):
    server = ServerThread(engine, served_model_name=MODEL).start()
    try:
        url = server.url + "/v1/usage"
        assert_openai_error(httpx.get(url, params={"start_date": "yesterday"}), 400,
                            param="start_date")
        assert_openai_error(httpx.get(url, params={"start_date": "2026-02-02",
                                                   "end_date": "2026-02-01"}), 400)
        assert_openai_error(httpx.get(url, params={"key_id": "k" * 200}), 400, param="key_id")
        assert "/v1/usage" in httpx.get(server.url + "/openapi.json").json()["paths"]
    finally:
        server.stop()
