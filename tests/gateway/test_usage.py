"""Usage records: the SQLite and PostgreSQL stores (batched off the event loop, summed by key,
model and UTC day, persistent) and GET /v1/usage over real HTTP against the real app and a tiny
real engine. Postgres is a real server (postgres_fixture.py), started once per session; its
tests are skipped, saying why, only where the PostgreSQL binaries or psycopg are absent."""
from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from cormorant.gateway.telemetry.request_log import TelemetryConfigError, build_telemetry
from cormorant.gateway.telemetry.usage import (PostgresUsageStore, SQLiteUsageStore, UsageEvent,
                                               UsageQuery, open_usage_store, redact_url, utc_day)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import ServerThread, assert_openai_error, start_engine  # noqa: E402
from server_helpers import tiny_engine_config  # noqa: E402
from postgres_fixture import create_database, postgres_server  # noqa: E402,F401
from redis_fixture import free_port  # noqa: E402

MODEL = "tiny-usage"
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def usage_db(request, tmp_path) -> str:
    """Where a test's usage goes: a SQLite file, or a fresh database on the real Postgres."""
    if request.param == "sqlite":
        return str(tmp_path / "usage.db")
    return create_database(request.getfixturevalue("postgres_server"))


def event(day="2026-01-01", key="k1", model="m", version="v1", p=10, c=5, cached=0,
          failed=False) -> UsageEvent:
    return UsageEvent(day, key, model, version, p, c, cached, failed)


# --- the store --------------------------------------------------------------------------------

def test_store_sums_by_day_key_and_model(usage_db):
    store = open_usage_store(usage_db)
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


def test_recording_never_waits_for_the_database(usage_db):
    store = open_usage_store(usage_db)
    try:
        started = time.perf_counter()
        for i in range(20_000):
            store.record(event(key=f"k{i % 7}", p=1, c=2))
        enqueue_s = time.perf_counter() - started
        rows = store.query(UsageQuery()).result(30)  # queued behind every write
        assert sum(r["requests"] for r in rows) == 20_000
        assert sum(r["completion_tokens"] for r in rows) == 40_000
        # 20k single-row transactions (disk or network) take seconds; enqueuing, milliseconds.
        assert enqueue_s < 1.0, enqueue_s
    finally:
        store.close()


def test_a_file_database_persists(tmp_path):
    path = str(tmp_path / "nested" / "usage.db")  # the folder is created
    store = open_usage_store(path)
    assert isinstance(store, SQLiteUsageStore)
    store.record(event())
    store.close()
    reopened = open_usage_store(path)
    try:
        assert reopened.query(UsageQuery()).result(5)[0]["requests"] == 1
    finally:
        reopened.close()


def test_a_postgres_database_persists_and_is_shared(postgres_server):
    url = create_database(postgres_server)
    one, two = open_usage_store(url), open_usage_store(url)  # e.g. two replicas
    try:
        assert isinstance(one, PostgresUsageStore)
        one.record(event())
        two.record(event(p=1, c=1))
        assert one.flush() and two.flush()
    finally:
        one.close()
        two.close()
    reopened = open_usage_store(url.replace("postgresql://", "postgres://"))
    try:
        [row] = reopened.query(UsageQuery()).result(5)
        assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (2, 11, 6)
    finally:
        reopened.close()


def test_a_lost_postgres_connection_is_reopened(postgres_server):
    import psycopg

    url = create_database(postgres_server)
    store = open_usage_store(url)
    try:
        store.record(event())
        assert store.flush()
        with psycopg.connect(url, autocommit=True) as admin:  # the server drops the writer
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'cormorant-usage'")
        store.record(event())  # this batch fails on the dead connection: dropped and logged
        store.flush()
        store.record(event())  # the next one reconnects
        assert store.flush()
        [row] = store.query(UsageQuery()).result(5)
        assert row["requests"] + store.num_dropped == 3 and store.num_dropped <= 1
    finally:
        store.close()


def test_postgres_and_sqlite_agree_on_the_same_records(postgres_server):
    rng = random.Random(5)
    events = [event(day=f"2026-03-0{rng.randint(1, 4)}", key=rng.choice(["a", "b", "anonymous"]),
                    model=rng.choice(["m1", "m2"]), version=rng.choice(["v1", "v2"]),
                    p=rng.randint(0, 10**6), c=rng.randint(0, 4096), cached=rng.randint(0, 64),
                    failed=rng.random() < 0.2) for _ in range(3000)]
    stores = [open_usage_store(None), open_usage_store(create_database(postgres_server))]
    try:
        for e in events:
            for store in stores:
                store.record(e)
        for q in (UsageQuery(), UsageQuery(key_id="a"), UsageQuery(model="m2", key_id="b"),
                  UsageQuery(start_day="2026-03-02", end_day="2026-03-03"), UsageQuery(limit=5),
                  UsageQuery(key_id="nobody")):
            lite, pg = (store.query(q).result(30) for store in stores)
            assert pg == lite, q
        assert sum(r["requests"] for r in lite) == 0  # the last query
        assert sum(r["requests"] for r in stores[1].query(UsageQuery()).result(30)) == 3000
    finally:
        for store in stores:
            store.close()


def test_an_unreachable_postgres_fails_fast_and_hides_the_password():
    url = f"postgresql://cormorant:s3cret-pw@127.0.0.1:{free_port()}/usage"  # nothing listens
    started = time.monotonic()
    with pytest.raises(TelemetryConfigError) as failure:
        open_usage_store(url)
    assert time.monotonic() - started < 6
    message = str(failure.value)
    assert "cannot connect to PostgreSQL" in message and "127.0.0.1" in message
    assert "s3cret-pw" not in message and "cormorant:***@" in message
    assert failure.value.__cause__ is None and failure.value.__context__ is None
    # What `cormorant serve` prints before exiting 2 is that same message, unwrapped.
    with pytest.raises(TelemetryConfigError) as served:
        build_telemetry(64, usage_db=url)
    assert str(served.value) == message


def test_unreachable_postgres_stops_serve_with_status_2(tiny_llama):
    url = f"postgresql://cormorant:s3cret-pw@127.0.0.1:{free_port()}/usage"
    proc = subprocess.run(
        [sys.executable, "-m", "cormorant", "serve", "--model", tiny_llama, "--device", "cpu",
         "--port", str(free_port()), "--usage-db", url],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot connect to PostgreSQL" in proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout  # the password never reaches a log


def test_redact_url():
    assert redact_url("postgresql://u:p%40ss@h:5432/db?sslmode=require") == \
        "postgresql://u:***@h:5432/db?sslmode=require"
    assert redact_url("postgres://h/db?user=u&password=pw&x=1") == \
        "postgres://h/db?user=u&password=***&x=1"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


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


def test_usage_endpoint_sums_what_was_served(engine, usage_db):
    db = usage_db
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


def test_a_blocked_postgres_never_blocks_the_event_loop(engine, postgres_server):
    """While another session holds the usage table locked, the writer thread waits on it; the
    server keeps answering, and the records land once the lock goes."""
    import psycopg

    url = create_database(postgres_server)
    server = ServerThread(engine, served_model_name=MODEL, usage_db=url).start()
    locker = psycopg.connect(url)
    try:
        locker.execute("LOCK TABLE usage_daily IN ACCESS EXCLUSIVE MODE")  # held until commit
        client = server.client(timeout=20)
        served = [client.completions.create(model=MODEL, prompt="blocked?", max_tokens=2).usage
                  for _ in range(3)]
        read: dict = {}
        reader = threading.Thread(target=lambda: read.update(rows=usage_rows(server)))
        reader.start()  # GET /v1/usage queues behind the blocked writes
        time.sleep(0.5)
        assert reader.is_alive()  # it really waits on the database...
        started = time.monotonic()
        assert httpx.get(server.url + "/v1/models", timeout=5).status_code == 200
        client.completions.create(model=MODEL, prompt="still here", max_tokens=1)
        assert time.monotonic() - started < 10  # ...while the event loop serves on
        locker.commit()
        reader.join(15)
        assert not reader.is_alive()
        assert read["rows"][0]["requests"] >= 3
        row = wait_for_requests(server, 4)
        assert row["requests"] == 4
        assert row["prompt_tokens"] >= sum(u.prompt_tokens for u in served)
    finally:
        locker.close()
        server.stop()
