"""Stored Responses API conversations, per API key, in the usage store's database.

`POST /v1/responses` stores each finished response's conversation (the chat messages up to and
including its output) under its id and the caller's key id; `previous_response_id` reads it
back only for the same key (another key's id reads as missing: a 404, never a 403 that would
confirm it exists). Same target as the usage store (`--usage-db`): SQLite (a file, or memory
for an embedded app) or PostgreSQL (psycopg 3). Each call holds one connection under a lock
and runs off the event loop (the caller awaits `asyncio.to_thread`). Rows older than
`ttl_s` are deleted as new ones are written.
Imports sqlite3 and gateway.telemetry.usage (targets); psycopg only for a Postgres URL.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from cormorant.gateway.telemetry.usage import is_postgres_url

TTL_S = 30 * 24 * 3600.0  # OpenAI keeps stored responses for 30 days
_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, created REAL NOT NULL, messages TEXT NOT NULL)"""


class ResponseStore:
    """put/get of one conversation (a list of chat message dicts) per response id."""

    def __init__(self, target: str | None = None, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._postgres = is_postgres_url(target)
        if self._postgres:
            import psycopg  # the `postgres` extra

            self._conn: Any = psycopg.connect(target, autocommit=True,
                                              application_name="cormorant-responses")
            self._mark = "%s"
        else:
            if target and target != ":memory:":
                Path(target).expanduser().parent.mkdir(parents=True, exist_ok=True)
                target = str(Path(target).expanduser())
            self._conn = sqlite3.connect(target or ":memory:", check_same_thread=False,
                                         isolation_level=None)
            self._mark = "?"
        self._conn.execute(_SCHEMA)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._mark)

    def put(self, response_id: str, key_id: str, messages: list[dict]) -> None:
        now = time.time()
        with self._lock:
            self._conn.execute(self._sql("DELETE FROM responses WHERE created < ?"),
                               (now - self.ttl_s,))
            self._conn.execute(self._sql("INSERT INTO responses (id, key_id, created, messages)"
                                         " VALUES (?, ?, ?, ?)"),
                               (response_id, key_id, now, json.dumps(messages)))

    def get(self, response_id: str, key_id: str) -> list[dict] | None:
        """The conversation, or None when the id is unknown, expired or another key's."""
        with self._lock:
            row = self._conn.execute(
                self._sql("SELECT messages FROM responses WHERE id = ? AND key_id = ? "
                          "AND created >= ?"),
                (response_id, key_id, time.time() - self.ttl_s)).fetchone()
        return None if row is None else json.loads(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
