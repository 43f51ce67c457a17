"""Usage accounting: tokens per API key, model and day, and GET /v1/usage to read them.

`UsageStore` is the seam: `record()` never blocks (the request path only enqueues), `query()`
returns a concurrent Future. `SQLiteUsageStore` is the embedded implementation: one
background thread owns the only connection, folds whatever is queued into per-(day, key,
model, version) sums and upserts them in one transaction, so the event loop never waits on
disk and an in-memory database (one per connection in SQLite) still works. Reads go through
the same thread, queued behind the writes before them, so a query sees every record made
before it. `PostgresUsageStore` (a postgres:// or postgresql:// URL, needs the `postgres`
extra: psycopg 3) is the same writer thread over one psycopg connection: the table is created
if missing, each batch is one transaction of INSERT ... ON CONFLICT DO UPDATE upserts (so several
servers may share one database), and a lost connection is reopened on the next batch.
Where: `cormorant serve` defaults to ~/.cormorant/usage.db (beside the default key database);
an embedded app (ServerConfig.usage_db None) keeps it in memory. Requests served without API
keys are recorded under the key id "anonymous". Days are UTC calendar days.
Imports sqlite3, starlette/fastapi (the route); psycopg only when a Postgres URL is opened.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import queue
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

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
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.future: Future = Future()


_STOP = object()


def _sums(events: list[UsageEvent]) -> list[tuple]:
    """One upsert row per (day, key, model, version): the batch folded."""
    sums: dict[tuple, list[int]] = {}
    for e in events:
        row = sums.setdefault(e.group, [0, 0, 0, 0, 0])
        for i, value in enumerate((1, int(e.failed), e.prompt_tokens, e.completion_tokens,
                                   e.cached_tokens)):
            row[i] += value
    return [(*group, *row) for group, row in sums.items()]


class _BatchWriter:
    """The writer thread shared by the stores: it alone touches the connection, folds queued
    events into one transaction and runs queries in queue order. Subclasses give `_open`,
    `_write_rows` (raise to drop the batch), `_select` and `_close_conn`."""

    _errors: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.num_dropped = 0  # events lost to database errors (logged)
        self._conn: Any = None
        ready: Future = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="cormorant-usage")
        self._thread.start()
        ready.result()  # a bad path fails the server start, not the first request

    # --- the request side (any thread) ------------------------------------------------------

    def record(self, event: UsageEvent) -> None:
        self._queue.put(event)

    def query(self, q: UsageQuery) -> Future:
        call = _Call(lambda conn: self._select(conn, q))
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

    def _open(self) -> Any:
        raise NotImplementedError

    def _write_rows(self, conn: Any, rows: list[tuple]) -> None:
        raise NotImplementedError

    def _select(self, conn: Any, q: UsageQuery) -> list[dict]:
        raise NotImplementedError

    def _close_conn(self, conn: Any) -> None:
        conn.close()

    def _run(self, ready: Future) -> None:
        try:
            self._conn = self._open()
        except Exception as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while self._serve_batch():
                pass
        finally:
            if self._conn is not None:
                self._close_conn(self._conn)

    def _serve_batch(self) -> bool:
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
            self._write(events)  # calls see every event queued before them
            events = []
            if item is _STOP:
                return False
            self._call(item)
        self._write(events)
        return True

    def _write(self, events: list[UsageEvent]) -> None:
        if not events:
            return
        try:
            self._write_rows(self._conn, _sums(events))
        except self._errors:
            self.num_dropped += len(events)
            logger.exception("usage: dropped %d records", len(events))

    def _call(self, call: _Call) -> None:
        try:
            call.future.set_result(call.fn(self._conn))
        except Exception as exc:
            call.future.set_exception(exc)


class SQLiteUsageStore(_BatchWriter):
    _errors = (sqlite3.Error,)

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        super().__init__()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode = WAL")  # readers elsewhere never block us
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _write_rows(self, conn: sqlite3.Connection, rows: list[tuple]) -> None:
        with conn:  # one transaction for the whole batch
            conn.execute("BEGIN")
            conn.executemany(_UPSERT, rows)

    def _select(self, conn: sqlite3.Connection, q: UsageQuery) -> list[dict]:
        return _select_sqlite(conn, q)


def _where(q: UsageQuery, placeholder: str) -> tuple[str, list]:
    """The WHERE clause (with the driver's placeholder) and its arguments for a query."""
    where, args = [], []
    for column, op, value in (("key_id", "=", q.key_id), ("model", "=", q.model),
                              ("day", ">=", q.start_day), ("day", "<=", q.end_day)):
        if value is not None:
            where.append(f"{column} {op} {placeholder}")
            args.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), args


def _select_sqlite(conn: sqlite3.Connection, q: UsageQuery) -> list[dict]:
    where, args = _where(q, "?")
    sql = ("SELECT day, key_id, model, SUM(requests), SUM(failed_requests), SUM(prompt_tokens),"
           " SUM(completion_tokens), SUM(cached_tokens) FROM usage_daily" + where
           + " GROUP BY day, key_id, model ORDER BY day, key_id, model LIMIT ?")
    return [dict(zip(_COLUMNS, row)) for row in conn.execute(sql, (*args, q.limit))]


# --- Postgres -------------------------------------------------------------------------------

_PG_SCHEMA = _SCHEMA.replace("INTEGER", "BIGINT")  # token sums outgrow 32 bits on a busy fleet
_PG_UPSERT = """
INSERT INTO usage_daily AS u (day, key_id, model, model_version, requests, failed_requests,
                              prompt_tokens, completion_tokens, cached_tokens)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (day, key_id, model, model_version) DO UPDATE SET
    requests = u.requests + excluded.requests,
    failed_requests = u.failed_requests + excluded.failed_requests,
    prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens,
    cached_tokens = u.cached_tokens + excluded.cached_tokens"""
CONNECT_TIMEOUT_S = 5  # an unreachable server fails the start in seconds, not minutes


def is_postgres_url(target: str | None) -> bool:
    return bool(target) and target.split(":", 1)[0].lower() in ("postgres", "postgresql")


def redact_url(url: str) -> str:
    """The URL with any password replaced by '***' (userinfo and ?password=)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    found = re.search(r"(?i)(?:^|&)password=([^&]*)", urlsplit(url).query)
    return password or (unquote(found.group(1)) if found else None)


class PostgresUsageStore(_BatchWriter):
    """Usage rows in PostgreSQL (psycopg 3): same table, same sums, same queries as SQLite.
    A batch that fails (e.g. the server went away) is dropped and logged, never retried (a
    commit whose answer was lost would otherwise count twice); the next batch reconnects."""

    def __init__(self, url: str, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        import psycopg  # the `postgres` extra

        self.url = url
        self.connect_timeout = connect_timeout
        self._pg = psycopg
        self._errors = (psycopg.Error,)
        super().__init__()

    def _open(self) -> Any:
        pg = self._pg
        conn = pg.connect(self.url, autocommit=True, application_name="cormorant-usage",
                          connect_timeout=max(1, int(self.connect_timeout)))
        try:
            with conn.transaction():
                conn.execute(_PG_SCHEMA)
        except (pg.errors.UniqueViolation, pg.errors.DuplicateTable):
            pass  # another server created it at the same moment
        except BaseException:
            conn.close()
            raise
        return conn

    def _live(self) -> Any:
        """The connection, reopened if it was lost."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._conn = self._open()
        return self._conn

    def _write_rows(self, conn: Any, rows: list[tuple]) -> None:
        conn = self._live()
        with conn.transaction():  # one transaction for the whole batch
            with conn.cursor() as cur:
                cur.executemany(_PG_UPSERT, rows)

    def _select(self, conn: Any, q: UsageQuery) -> list[dict]:
        where, args = _where(q, "%s")
        sql = ("SELECT day, key_id, model, SUM(requests)::bigint, SUM(failed_requests)::bigint,"
               " SUM(prompt_tokens)::bigint, SUM(completion_tokens)::bigint,"
               " SUM(cached_tokens)::bigint FROM usage_daily" + where
               + " GROUP BY day, key_id, model ORDER BY day, key_id, model LIMIT %s")
        return [dict(zip(_COLUMNS, row)) for row in self._live().execute(sql, (*args, q.limit))]


def _open_postgres(url: str) -> PostgresUsageStore:
    """A clean start error (TelemetryConfigError: `cormorant serve` exits 2) naming the URL
    without its password, instead of a traceback that might carry it."""
    # request_log imports this module
    from cormorant.gateway.telemetry.request_log import TelemetryConfigError

    shown = redact_url(url)
    try:
        return PostgresUsageStore(url)
    except ImportError:
        message = "PostgreSQL needs psycopg 3: pip install 'cormorant[postgres]'"
    except Exception as exc:
        message = f"cannot connect to PostgreSQL: {str(exc).strip()}"
        password = _password(url)
        if password:
            message = message.replace(password, "***")
    raise TelemetryConfigError(f"usage database {shown}: {message}") from None


def open_usage_store(target: str | None) -> UsageStore:
    """None or ':memory:': SQLite in memory (lost on restart); a path: SQLite on disk (its
    folder is created); postgres:// or postgresql://: PostgreSQL (the table is created if
    missing; an unreachable server raises TelemetryConfigError with the password hidden)."""
    if is_postgres_url(target):
        return _open_postgres(target)
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
