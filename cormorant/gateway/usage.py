"""Usage accounting: tokens per API key, model and day, and GET /v1/usage to read them.

`UsageStore` is the seam: `record()` never blocks (the request path only enqueues), `query()`
returns a concurrent Future. `SQLiteUsageStore` is the embedded implementation: one
background thread owns the only connection, folds whatever is queued into per-(day, key,
model, version) sums and upserts them in one transaction, so the event loop never waits on
disk and an in-memory database (one per connection in SQLite) still works. Reads go through
the same thread, queued behind the writes before them, so a query sees every record made
before it. Postgres: `open_usage_store` refuses postgres:// URLs with NotImplementedError; a
Postgres store implements the same protocol (not written yet, so not claimed).
Where: `cormorant serve` defaults to ~/.cormorant/usage.db (beside the default key database);
an embedded app (ServerConfig.usage_db None) keeps it in memory. Requests served without API
keys are recorded under the key id "anonymous". Days are UTC calendar days.
Imports sqlite3, starlette/fastapi (the route) and nothing else.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, Query
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

logger = logging.getLogger("cormorant.gateway")

MAX_ROWS = 10_000  # one response; narrow the dates or filter by key or model for more
MAX_BATCH = 1_000  # events folded into one transaction at most
ANONYMOUS = "anonymous"  # key_id of requests served without API keys

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_daily (
    day TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL DEFAULT '',
    requests INTEGER NOT NULL DEFAULT 0,
    failed_requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, model, model_version)
)"""
_UPSERT = """
INSERT INTO usage_daily (day, key_id, model, model_version, requests, failed_requests,
                         prompt_tokens, completion_tokens, cached_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, key_id, model, model_version) DO UPDATE SET
    requests = requests + excluded.requests,
    failed_requests = failed_requests + excluded.failed_requests,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cached_tokens = cached_tokens + excluded.cached_tokens"""
_COLUMNS = ("day", "key_id", "model", "requests", "failed_requests", "prompt_tokens",
            "completion_tokens", "cached_tokens")


@dataclass(frozen=True)
class UsageEvent:
    """One HTTP request that ran on the engine."""

    day: str  # UTC, YYYY-MM-DD
    key_id: str
    model: str
    model_version: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    failed: bool = False

    @property
    def group(self) -> tuple[str, str, str, str]:
        return (self.day, self.key_id, self.model, self.model_version)


@dataclass(frozen=True)
class UsageQuery:
    key_id: str | None = None
    model: str | None = None
    start_day: str | None = None  # inclusive, YYYY-MM-DD
    end_day: str | None = None  # inclusive
    limit: int = MAX_ROWS


def utc_day(timestamp: float | None = None) -> str:
    when = dt.datetime.now(dt.timezone.utc) if timestamp is None else \
        dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return when.date().isoformat()


class UsageStore(Protocol):
    def record(self, event: UsageEvent) -> None:
        """Enqueue; never blocks, never raises."""

    def query(self, q: UsageQuery) -> Future:
        """A Future of rows (dicts with _COLUMNS), one per (day, key_id, model)."""

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""


class _Call:
    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.future: Future = Future()


_STOP = object()


class SQLiteUsageStore:
    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.num_dropped = 0  # events lost to database errors (logged)
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="cormorant-usage")
        self._thread.start()
        ready.result()  # a bad path fails the server start, not the first request

    # --- the request side (any thread) ------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        self._queue.put(event)

    def query(self, q: UsageQuery) -> Future:
        call = _Call(lambda conn: _select(conn, q))
        self._queue.put(call)
        return call.future

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything recorded so far is written."""
        call = _Call(lambda conn: None)
        self._queue.put(call)
        try:
            call.future.result(timeout)
            return True
        except Exception:
            return False

    def close(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # --- the writer thread ------------------------------------------------------------------

    def _run(self, ready: Future) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")  # readers elsewhere never block us
            conn.execute(_SCHEMA)
        except Exception as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while self._serve_batch(conn):
                pass
        finally:
            conn.close()

    def _serve_batch(self, conn: sqlite3.Connection) -> bool:
        """Take what is queued (waiting for at least one item); False once told to stop."""
        items = [self._queue.get()]
        while len(items) < MAX_BATCH:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        events: list[UsageEvent] = []
        for item in items:
            if isinstance(item, UsageEvent):
                events.append(item)
                continue
            self._write(conn, events)  # calls see every event queued before them
            events = []
            if item is _STOP:
                return False
            self._call(conn, item)
        self._write(conn, events)
        return True

    def _write(self, conn: sqlite3.Connection, events: list[UsageEvent]) -> None:
        if not events:
            return
        sums: dict[tuple, list[int]] = {}
        for e in events:
            row = sums.setdefault(e.group, [0, 0, 0, 0, 0])
            for i, value in enumerate((1, int(e.failed), e.prompt_tokens, e.completion_tokens,
                                       e.cached_tokens)):
                row[i] += value
        try:
            with conn:  # one transaction for the whole batch
                conn.execute("BEGIN")
                conn.executemany(_UPSERT, [(*group, *row) for group, row in sums.items()])
        except sqlite3.Error:
            self.num_dropped += len(events)
            logger.exception("usage: dropped %d records", len(events))

    @staticmethod
    def _call(conn: sqlite3.Connection, call: _Call) -> None:
        try:
            call.future.set_result(call.fn(conn))
        except Exception as exc:
            call.future.set_exception(exc)


def _select(conn: sqlite3.Connection, q: UsageQuery) -> list[dict]:
    where, args = [], []
    for column, op, value in (("key_id", "=", q.key_id), ("model", "=", q.model),
                              ("day", ">=", q.start_day), ("day", "<=", q.end_day)):
        if value is not None:
            where.append(f"{column} {op} ?")
            args.append(value)
    sql = ("SELECT day, key_id, model, SUM(requests), SUM(failed_requests), SUM(prompt_tokens),"
           " SUM(completion_tokens), SUM(cached_tokens) FROM usage_daily"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " GROUP BY day, key_id, model ORDER BY day, key_id, model LIMIT ?")
    return [dict(zip(_COLUMNS, row)) for row in conn.execute(sql, (*args, q.limit))]


def open_usage_store(target: str | None) -> UsageStore:
    """None or ':memory:': SQLite in memory (lost on restart); a path: SQLite on disk (its
    folder is created)."""
    if target and target.split(":", 1)[0] in ("postgres", "postgresql"):
        raise NotImplementedError("a Postgres usage store is not implemented yet; pass a "
                                  "SQLite file path to --usage-db")
    if target and target != ":memory:":
        Path(target).expanduser().parent.mkdir(parents=True, exist_ok=True)
        target = str(Path(target).expanduser())
    return SQLiteUsageStore(target or ":memory:")


# --- GET /v1/usage --------------------------------------------------------------------------

def _bad(param: str, message: str) -> HTTPException:
    return HTTPException(400, f"Invalid value for '{param}': {message}")


def usage_router(store: UsageStore) -> APIRouter:
    """GET /v1/usage: token sums by key, model and UTC day. Admin scope is enforced by the
    auth layer's route table, not here."""
    router = APIRouter()

    @router.get("/v1/usage", summary="Token usage by API key, model and day")
    async def get_usage(
        key_id: str | None = Query(None, max_length=128),
        model: str | None = Query(None, max_length=256),
        start_date: dt.date | None = Query(None, description="first UTC day, inclusive"),
        end_date: dt.date | None = Query(None, description="last UTC day, inclusive"),
    ) -> JSONResponse:
        if start_date and end_date and end_date < start_date:
            raise _bad("end_date", "it is before start_date.")
        q = UsageQuery(key_id=key_id, model=model,
                       start_day=start_date.isoformat() if start_date else None,
                       end_day=end_date.isoformat() if end_date else None, limit=MAX_ROWS + 1)
        rows = await asyncio.wrap_future(store.query(q))
        data = [{"object": "usage.daily", **row,
                 "total_tokens": row["prompt_tokens"] + row["completion_tokens"]}
                for row in rows[:MAX_ROWS]]
        return JSONResponse({"object": "list", "data": data, "has_more": len(rows) > MAX_ROWS})

    return router
