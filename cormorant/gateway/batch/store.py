"""BatchStore: files, batch jobs and per-line results, in the usage store's database.

SQLite by default (the usage database file, or memory), PostgreSQL for a postgres:// URL
(psycopg 3, the `postgres` extra): three tables, created if missing. Every line of a batch is
a row; its result is written once, by `put_result`, whose UPDATE only fills a row that has no
result yet, in one transaction: a line re-run after a crash cannot be answered twice, and a
line whose result was committed is never run again. A batch runs under one worker's lease
(`claim`, renewed while it runs), so servers sharing a database split batches between them
and a dead server's batches pass to a live one once its lease runs out. Request and result blobs are sealed with
the data key (gateway.crypto), bound to "<batch id>/<line>". One thread owns the connection;
`call` runs a method there, so the event loop never waits on disk.
Imports the stdlib, gateway.crypto and gateway.telemetry.usage (URL helpers); psycopg lazily.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cormorant.gateway.crypto import DataCipher
from cormorant.gateway.telemetry.usage import is_postgres_url

T = TypeVar("T")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS batch_files (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, doc TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS batch_jobs (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at BIGINT NOT NULL,
        status TEXT NOT NULL, doc TEXT NOT NULL, lease_owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS batch_lines (
        batch_id TEXT NOT NULL, line_no INTEGER NOT NULL, custom_id TEXT NOT NULL,
        request {blob} NOT NULL, result {blob}, is_error INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (batch_id, line_no))""",
)


class BatchStore:
    def __init__(self, target: str | None = None, cipher: DataCipher | None = None) -> None:
        """target: what ServerConfig.usage_db holds (None: in memory)."""
        self.cipher = cipher or DataCipher()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cormorant-batchdb")
        self._lock = threading.Lock()
        self._pg = is_postgres_url(target)
        self._target = target
        self._connection: Any = None  # opened on first use (an app never started opens none)

    # --- plumbing ----------------------------------------------------------------------------
    def _open(self, target: str | None) -> Any:
        if self._pg:
            import psycopg

            conn = psycopg.connect(target, autocommit=True, application_name="cormorant-batch")
            for ddl in _SCHEMA:
                conn.execute(ddl.format(blob="BYTEA"))
            return conn
        if target and target != ":memory:":
            Path(target).expanduser().parent.mkdir(parents=True, exist_ok=True)
            target = str(Path(target).expanduser())
        conn = sqlite3.connect(target or ":memory:", check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for ddl in _SCHEMA:
            conn.execute(ddl.format(blob="BLOB"))
        return conn

    @property
    def _conn(self) -> Any:
        with self._lock:
            if self._connection is None:
                self._connection = self._open(self._target)
            return self._connection

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self._pg else sql

    def _exec(self, sql: str, args: tuple = ()) -> Any:
        return self._conn.execute(self._sql(sql), args)

    def _tx(self, fn: Callable[[], T]) -> T:
        if self._pg:
            with self._conn.transaction():
                return fn()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn()
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return out

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one of this store's methods on its thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        if self._connection is not None:
            self._executor.submit(self._connection.close).result()
            self._connection = None
        self._executor.shutdown(wait=True)

    def _seal(self, obj: Any, aad: str) -> bytes:
        return self.cipher.seal(json.dumps(obj, separators=(",", ":")).encode(), aad)

    def _unseal(self, blob: Any, aad: str) -> Any:
        return json.loads(self.cipher.open_(bytes(blob), aad))

    # --- files -------------------------------------------------------------------------------
    def put_file(self, doc: dict, owner: str) -> None:
        """Add the file's record, or replace it (a batch's output written again)."""
        self._exec("INSERT INTO batch_files (id, owner, doc) VALUES (?, ?, ?) ON CONFLICT (id)"
                   " DO UPDATE SET doc = excluded.doc", (doc["id"], owner, json.dumps(doc)))

    def get_file(self, file_id: str, owner: str) -> dict | None:
        row = self._exec("SELECT doc FROM batch_files WHERE id = ? AND owner = ?",
                         (file_id, owner)).fetchone()
        return json.loads(row[0]) if row else None

    def list_files(self, owner: str, purpose: str | None, limit: int) -> list[dict]:
        """The owner's files, newest first."""
        docs = [json.loads(r[0]) for r in self._exec(
            "SELECT doc FROM batch_files WHERE owner = ?", (owner,)).fetchall()]
        docs = [d for d in docs if purpose is None or d["purpose"] == purpose]
        return sorted(docs, key=lambda d: (d["created_at"], d["id"]), reverse=True)[:limit]

    def delete_file(self, file_id: str, owner: str) -> bool:
        return self._exec("DELETE FROM batch_files WHERE id = ? AND owner = ?",
                          (file_id, owner)).rowcount > 0

    # --- batches -----------------------------------------------------------------------------
    def create_batch(self, doc: dict, owner: str, lines: list[tuple[str, dict]]) -> None:
        """lines: (custom_id, request) in file order; stored sealed, line numbers from 0."""
        rows = [(doc["id"], i, cid, self._seal(req, f"{doc['id']}/{i}"))
                for i, (cid, req) in enumerate(lines)]

        def insert() -> None:
            self._exec("INSERT INTO batch_jobs (id, owner, created_at, status, doc) "
                       "VALUES (?, ?, ?, ?, ?)", (doc["id"], owner, doc["created_at"],
                                                  doc["status"], json.dumps(doc)))
            cur = self._conn.cursor()
            cur.executemany(self._sql("INSERT INTO batch_lines (batch_id, line_no, custom_id,"
                                      " request) VALUES (?, ?, ?, ?)"), rows)
        self._tx(insert)

    def get_batch(self, batch_id: str, owner: str | None) -> dict | None:
        """The batch's document with its request_counts; owner None: whoever owns it."""
        sql, args = "SELECT doc FROM batch_jobs WHERE id = ?", (batch_id,)
        if owner is not None:
            sql, args = sql + " AND owner = ?", (batch_id, owner)
        row = self._exec(sql, args).fetchone()
        return self._with_counts(json.loads(row[0])) if row else None

    def list_batches(self, owner: str, after: str | None, limit: int) -> list[dict]:
        """Newest first; after: a batch id, those created before it."""
        sql, args = "SELECT doc FROM batch_jobs WHERE owner = ?", [owner]
        if after:
            row = self._exec("SELECT created_at FROM batch_jobs WHERE id = ? AND owner = ?",
                             (after, owner)).fetchone()
            if row:
                sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                args += [row[0], row[0], after]
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        return [self._with_counts(json.loads(r[0]))
                for r in self._exec(sql, (*args, limit)).fetchall()]

    def save_batch(self, doc: dict, expect: tuple[str, ...]) -> bool:
        """Store doc (its new status) if the stored status is still one of `expect`: a
        transition, never a lost update between the worker and a cancel."""
        stored = {k: v for k, v in doc.items() if k != "request_counts"}
        marks = ", ".join("?" * len(expect))
        return self._exec(f"UPDATE batch_jobs SET status = ?, doc = ? WHERE id = ? AND status "
                          f"IN ({marks})", (doc["status"], json.dumps(stored), doc["id"],
                                            *expect)).rowcount > 0

    def claim(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the batch's lease for `owner` (a worker), unless another worker holds
        one that has not run out: servers sharing one database never run a batch twice."""
        now = time.time()
        return self._exec("UPDATE batch_jobs SET lease_owner = ?, lease_until = ? WHERE id = ? "
                          "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
                          (owner, now + ttl_s, batch_id, owner, now)).rowcount > 0

    def release(self, batch_id: str, owner: str) -> None:
        self._exec("UPDATE batch_jobs SET lease_owner = NULL, lease_until = 0 WHERE id = ? "
                   "AND lease_owner = ?", (batch_id, owner))

    def active_batch_ids(self) -> list[str]:
        marks = ", ".join("?" * len(ACTIVE))
        return [r[0] for r in self._exec(f"SELECT id FROM batch_jobs WHERE status IN ({marks})"
                                         " ORDER BY created_at, id", ACTIVE).fetchall()]

    def _with_counts(self, doc: dict) -> dict:
        total, done, failed = self._exec(
            "SELECT COUNT(*), COUNT(result), COALESCE(SUM(is_error), 0) FROM batch_lines "
            "WHERE batch_id = ?", (doc["id"],)).fetchone()
        doc["request_counts"] = {"total": int(total), "completed": int(done) - int(failed),
                                 "failed": int(failed)}
        return doc

    # --- lines -------------------------------------------------------------------------------
    def pending_lines(self, batch_id: str, limit: int, skip: frozenset[int] = frozenset()
                      ) -> list[tuple[int, str, dict]]:
        """(line number, custom_id, request) of lines without a result, in file order."""
        rows = self._exec("SELECT line_no, custom_id, request FROM batch_lines WHERE "
                          "batch_id = ? AND result IS NULL ORDER BY line_no LIMIT ?",
                          (batch_id, limit + len(skip))).fetchall()
        return [(n, cid, self._unseal(req, f"{batch_id}/{n}"))
                for n, cid, req in rows if n not in skip][:limit]

    def put_result(self, batch_id: str, line_no: int, result: dict, is_error: bool) -> bool:
        """Answer one line, once: False (and nothing written) if it already has a result."""
        blob = self._seal(result, f"{batch_id}/{line_no}")
        return self._exec("UPDATE batch_lines SET result = ?, is_error = ? WHERE batch_id = ? "
                          "AND line_no = ? AND result IS NULL",
                          (blob, int(is_error), batch_id, line_no)).rowcount > 0

    def fail_pending(self, batch_id: str, make: Callable[[str], dict]) -> int:
        """Answer every line without a result with make(custom_id), as errors (expiry)."""
        def fill() -> int:
            rows = self._exec("SELECT line_no, custom_id FROM batch_lines WHERE batch_id = ? "
                              "AND result IS NULL", (batch_id,)).fetchall()
            for n, cid in rows:
                self.put_result(batch_id, n, make(cid), True)
            return len(rows)
        return self._tx(fill)

    def results(self, batch_id: str) -> list[tuple[dict, bool]]:
        """Every answered line's result in file order, and whether it is an error."""
        rows = self._exec("SELECT line_no, result, is_error FROM batch_lines WHERE "
                          "batch_id = ? AND result IS NOT NULL ORDER BY line_no",
                          (batch_id,)).fetchall()
        return [(self._unseal(blob, f"{batch_id}/{n}"), bool(err)) for n, blob, err in rows]
