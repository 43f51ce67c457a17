"""Where key records live: an SQLite database (read-write) and a key file (read-only).

The database is what `cormorant keys` writes; the key file (JSON or TOML) is read-only to the
server. Both hold salted digests, never a secret in clear.
The server keeps an in-memory snapshot `{key_id: KeyRecord}` per store and re-reads it when
the source changed, checked at most every `refresh_s` seconds, so a key created, revoked or
rotated by another process takes effect without a restart. SQLite change detection uses
`PRAGMA data_version` (it moves whenever another connection commits); the key file uses its
mtime, size and inode. A failed reload (a half-edited file, a writer holding the lock) keeps
the previous snapshot and logs a warning, so nobody is locked out by accident; a deleted
source, though, takes its keys with it (deleting the file must be a way to revoke).
Imports the stdlib and gateway.auth.keys only.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from cormorant.gateway.auth.keys import ApiKey, KeyRecord

logger = logging.getLogger("cormorant.gateway")

DEFAULT_KEYS_DB = Path.home() / ".cormorant" / "keys.db"
DEFAULT_REFRESH_S = 1.0
HASH_SCHEME = "hmac-sha256"
_UNLOADED = object()  # the stamp before the first successful load
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, allowed_models TEXT,
    expires_at REAL, rpm INTEGER, tpm INTEGER, max_concurrent INTEGER,
    weight REAL NOT NULL DEFAULT 1.0, tenant TEXT NOT NULL, created_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0, scheme TEXT NOT NULL, salt BLOB NOT NULL,
    digest BLOB NOT NULL, cache_group TEXT NOT NULL DEFAULT '')
"""
# Columns added since the first schema: (name, definition) for ALTER TABLE on older databases.
_ADDED_COLUMNS = (("cache_group", "TEXT NOT NULL DEFAULT ''"),)


class KeyStore(Protocol):
    def get(self, key_id: str) -> KeyRecord | None: ...
    def records(self) -> list[KeyRecord]: ...


def record_to_row(rec: KeyRecord) -> dict:
    """The stored form of a record; scopes and models as sorted JSON lists."""
    k = rec.key
    models = None if k.allowed_models is None else json.dumps(sorted(k.allowed_models))
    return {"key_id": k.key_id, "name": k.name, "scopes": json.dumps(sorted(k.scopes)),
            "allowed_models": models, "expires_at": k.expires_at, "rpm": k.rpm, "tpm": k.tpm,
            "max_concurrent": k.max_concurrent, "weight": k.weight, "tenant": k.tenant,
            "created_at": k.created_at, "revoked": int(k.revoked), "scheme": HASH_SCHEME,
            "salt": rec.salt, "digest": rec.digest, "cache_group": k.cache_group}


def row_to_record(row: dict) -> KeyRecord:
    if row.get("scheme", HASH_SCHEME) != HASH_SCHEME:
        raise ValueError(f"key {row.get('key_id')!r}: unknown hash scheme {row['scheme']!r}")
    scopes = row["scopes"]
    models = row.get("allowed_models")
    scopes = json.loads(scopes) if isinstance(scopes, str) else scopes
    models = json.loads(models) if isinstance(models, str) else models
    key = ApiKey(key_id=row["key_id"], name=row["name"], scopes=frozenset(scopes),
                 allowed_models=None if models is None else frozenset(models),
                 expires_at=row.get("expires_at"), rpm=row.get("rpm"), tpm=row.get("tpm"),
                 max_concurrent=row.get("max_concurrent"), weight=float(row.get("weight", 1.0)),
                 tenant=row.get("tenant") or "", created_at=float(row.get("created_at", 0.0)),
                 revoked=bool(row.get("revoked", False)),
                 cache_group=row.get("cache_group") or "")
    salt, digest = row["salt"], row["digest"]
    # The key file is text: there the salt and digest are hex.
    salt = bytes.fromhex(salt) if isinstance(salt, str) else bytes(salt)
    digest = bytes.fromhex(digest) if isinstance(digest, str) else bytes(digest)
    return KeyRecord(key=key, salt=salt, digest=digest)


class _Snapshot:
    """A refreshed-on-change {key_id: record} map; subclasses say how to sense and load."""

    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._records: dict[str, KeyRecord] = {}
        self._stamp: object = _UNLOADED
        self._checked_at = float("-inf")

    def get(self, key_id: str) -> KeyRecord | None:
        self.refresh()
        return self._records.get(key_id)

    def records(self) -> list[KeyRecord]:
        self.refresh()
        return sorted(self._records.values(), key=lambda r: (r.key.created_at, r.key.key_id))

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < self.refresh_s:
            return
        # One thread reloads; the others keep reading the current snapshot meanwhile.
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._checked_at = now
            stamp = self._change_stamp()  # None: the source is gone, and its keys with it
            if stamp != self._stamp:
                self._records = {} if stamp is None else {r.key.key_id: r for r in self._load()}
                self._stamp = stamp
        except (OSError, sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            logger.warning("key store %s: reload failed, keeping %d keys: %s",
                           self.describe(), len(self._records), exc)
        finally:
            self._lock.release()

    def describe(self) -> str:
        raise NotImplementedError

    def _change_stamp(self) -> object:
        raise NotImplementedError

    def _load(self) -> list[KeyRecord]:
        raise NotImplementedError


class SqliteKeyStore(_Snapshot):
    """Keys in an SQLite file. The server reads; `cormorant keys` writes (add/revoke/rotate)."""

    def __init__(self, path: str | os.PathLike, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        super().__init__(refresh_s)
        self.path = Path(path).expanduser()
        self._conn = self._connect()
        self.refresh(force=True)

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created owner-only: digests are not secrets, but nobody else needs to read them.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        # check_same_thread=False: the CLI and tests use it from one thread, the server from
        # the event loop; writes are serialised by SQLite itself.
        conn = sqlite3.connect(self.path, timeout=0.5, check_same_thread=False,
                               isolation_level=None)
        self._inode = self.path.stat().st_ino
        conn.row_factory = sqlite3.Row
        conn.execute(_SCHEMA)
        _add_missing_columns(conn)
        return conn

    def describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self._conn.close()

    def _change_stamp(self) -> object:
        # A database deleted or replaced under us must not keep serving the old file's keys
        # through our open handle: then no keys (deleted) or the new file (replaced).
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return None
        if inode != self._inode:
            self._conn.close()
            self._conn = self._connect()
        return (inode, self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _load(self) -> list[KeyRecord]:
        # *: a database not yet given a newer column (_ADDED_COLUMNS) still loads.
        rows = self._conn.execute("SELECT * FROM api_keys").fetchall()
        return [row_to_record(dict(row)) for row in rows]

    # --- writes (the CLI); each is one transaction ------------------------------------------

    def add(self, record: KeyRecord) -> None:
        row = record_to_row(record)
        names = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)
        with self._conn:
            self._conn.execute(f"INSERT INTO api_keys ({names}) VALUES ({marks})", row)
        self._reload_own_write()

    def replace(self, record: KeyRecord) -> None:
        """Overwrite an existing key's settings and digest (rotate, revoke)."""
        row = record_to_row(record)
        sets = ", ".join(f"{name} = :{name}" for name in row if name != "key_id")
        with self._conn:
            cur = self._conn.execute(f"UPDATE api_keys SET {sets} WHERE key_id = :key_id", row)
        if cur.rowcount != 1:
            raise KeyError(record.key.key_id)
        self._reload_own_write()

    def _reload_own_write(self) -> None:
        # data_version only moves for *other* connections' commits; our own need a nudge.
        self._stamp = _UNLOADED
        self.refresh(force=True)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older cormorant up to the current columns."""
    for name, definition in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        if name in present:
            continue
        try:
            conn.execute(f"ALTER TABLE api_keys ADD COLUMN {name} {definition}")
        except sqlite3.OperationalError as exc:  # read-only, or another process was first
            # Readers still work (_load selects *; a missing column reads as its default).
            logger.warning("key database: could not add column %s: %s", name, exc)


class FileKeyStore(_Snapshot):
    """Keys in a JSON (`{"keys": [...]}`) or TOML (`[[keys]]`) file; salt and digest in hex.
    Read-only to the server; `cormorant keys --keys-file` rewrites it atomically."""

    def __init__(self, path: str | os.PathLike, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        super().__init__(refresh_s)
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"key file {self.path} does not exist")
        self.refresh(force=True)
        if self._stamp is _UNLOADED:
            raise ValueError(f"key file {self.path} could not be read")

    def describe(self) -> str:
        return str(self.path)

    def _change_stamp(self) -> object:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None  # deleted: every key in it is gone (an edit in place never gets here)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> list[KeyRecord]:
        return [row_to_record(row) for row in read_key_file(self.path)]

    def write(self, records: list[KeyRecord]) -> None:
        write_key_file(self.path, records)
        self.refresh(force=True)


def read_key_file(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        import tomllib  # Python 3.11+; the JSON form works everywhere

        data = tomllib.loads(text)
    else:
        data = json.loads(text) if text.strip() else {"keys": []}
    rows = data.get("keys", [])
    if not isinstance(rows, list):
        raise ValueError("'keys' must be a list")
    return rows


def write_key_file(path: Path, records: list[KeyRecord]) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    if path.suffix.lower() == ".toml":
        raise ValueError("cormorant writes JSON key files only; convert the TOML file or "
                         "use --keys-db")
    rows = []
    for rec in records:
        row = record_to_row(rec)
        row["scopes"] = json.loads(row["scopes"])
        row["allowed_models"] = (None if row["allowed_models"] is None
                                 else json.loads(row["allowed_models"]))
        row["revoked"] = rec.key.revoked
        row["salt"], row["digest"] = rec.salt.hex(), rec.digest.hex()
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"keys": rows}, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
