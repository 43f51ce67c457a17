"""Batch storage without a server: the data key (AES-GCM), the owner-only files vault, the
job store's answer-once rule, and the response cache's sealed bodies."""
from __future__ import annotations

import asyncio
import base64
import os
import stat

import pytest

from cormorant.gateway.batch.files import FileVault
from cormorant.gateway.batch.store import BatchStore
from cormorant.gateway.caching.response_cache import (MemoryCacheBackend, ResponseCache,
                                                      ResponseCacheConfig)
from cormorant.gateway.crypto import DATA_KEY_ENV, DataCipher, DataKeyError
from postgres_fixture import create_database, postgres_server  # noqa: F401


@pytest.fixture(params=["sqlite", "postgres"])
def batch_db(request, tmp_path) -> str:
    """The usage database the batch store shares: a SQLite file, or a real Postgres."""
    if request.param == "sqlite":
        return str(tmp_path / "usage.db")
    return create_database(request.getfixturevalue("postgres_server"))


def test_the_data_key_seals_and_refuses_the_wrong_key():
    key = os.urandom(32)
    cipher = DataCipher.from_env({DATA_KEY_ENV: base64.b64encode(key).decode()})
    blob = cipher.seal(b"private text", aad="file-1")
    assert b"private text" not in blob and cipher.open_(blob, aad="file-1") == b"private text"
    with pytest.raises(DataKeyError, match="not the key it was written with"):
        DataCipher(os.urandom(32)).open_(blob, aad="file-1")
    with pytest.raises(DataKeyError, match="not the key"):  # moved to another record
        cipher.open_(blob, aad="file-2")
    with pytest.raises(DataKeyError, match="set CORMORANT_DATA_KEY"):
        DataCipher().open_(blob, aad="file-1")
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(DataKeyError, match=DATA_KEY_ENV):
            DataCipher.from_env({DATA_KEY_ENV: bad})
    assert not DataCipher.from_env({}).enabled
    assert DataCipher().seal(b"plain") == b"plain"  # no key: plaintext, still owner-only


def test_the_vault_is_owner_only_and_refuses_odd_ids(tmp_path):
    vault = FileVault(tmp_path / "files", DataCipher(os.urandom(32)))
    vault.write("file-abc", b'{"x": 1}\n')
    assert stat.S_IMODE((tmp_path / "files").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "files" / "file-abc").stat().st_mode) == 0o600
    assert vault.read("file-abc") == b'{"x": 1}\n'
    assert b'"x"' not in (tmp_path / "files" / "file-abc").read_bytes()
    for bad in ("../escape", "file-../../etc", "file-a/b", ""):
        with pytest.raises(KeyError):
            vault.read(bad)
    vault.delete("file-abc")
    with pytest.raises(KeyError):
        vault.read("file-abc")
    assert [p.name for p in (tmp_path / "files").iterdir()] == []  # no temporary left over


def test_a_line_is_answered_once_and_survives_reopening(batch_db):
    db = batch_db
    store = BatchStore(db, DataCipher(os.urandom(32)))
    doc = {"id": "batch_1", "created_at": 1, "status": "in_progress"}
    store.create_batch(doc, "alice", [(f"c{i}", {"url": "/v1/completions", "body": {}})
                                      for i in range(3)])
    assert [n for n, _, _ in store.pending_lines("batch_1", 10)] == [0, 1, 2]
    assert store.put_result("batch_1", 1, {"answer": 1}, False)
    assert not store.put_result("batch_1", 1, {"answer": "again"}, False)  # once only
    assert [n for n, _, _ in store.pending_lines("batch_1", 10, frozenset({0}))] == [2]
    assert store.get_batch("batch_1", "bob") is None
    key = store.cipher
    store.close()
    reopened = BatchStore(db, key)
    assert reopened.results("batch_1") == [({"answer": 1}, False)]
    assert reopened.get_batch("batch_1", "alice")["request_counts"] == {
        "total": 3, "completed": 1, "failed": 0}
    assert not reopened.save_batch({**doc, "status": "completed"}, ("finalizing",))
    assert reopened.save_batch({**doc, "status": "cancelling"}, ("in_progress",))
    assert reopened.active_batch_ids() == ["batch_1"]
    reopened.close()
    with pytest.raises(DataKeyError):
        BatchStore(db, DataCipher(os.urandom(32))).results("batch_1")


def test_the_response_cache_seals_its_bodies():
    backend = MemoryCacheBackend()
    key = os.urandom(32)
    cache = ResponseCache(ResponseCacheConfig(), backend, cipher=DataCipher(key))

    async def run():
        await cache.put("k", {"text": "a private answer"})
        raw = await backend.get("k")
        assert raw is not None and b"private" not in raw
        assert await cache.get("k") == {"text": "a private answer"}
        other = ResponseCache(ResponseCacheConfig(), backend, cipher=DataCipher(os.urandom(32)))
        assert await other.get("k") is None  # another key: a miss, never an error
    asyncio.run(run())


def test_one_worker_at_a_time_holds_a_batch(batch_db):
    store = BatchStore(batch_db)
    store.create_batch({"id": "batch_2", "created_at": 1, "status": "in_progress"}, "alice",
                       [("c0", {"url": "/v1/completions", "body": {}})])
    assert store.claim("batch_2", "worker-a", 30.0)
    assert store.claim("batch_2", "worker-a", 30.0)  # renewed by its holder
    assert not store.claim("batch_2", "worker-b", 30.0)  # held: another server keeps off
    store.release("batch_2", "worker-b")  # not the holder: nothing happens
    assert not store.claim("batch_2", "worker-b", 30.0)
    store.release("batch_2", "worker-a")
    assert store.claim("batch_2", "worker-b", -1.0)  # released: free to take (a lease
    # that has already run out, as a dead server's has)
    assert store.claim("batch_2", "worker-a", 30.0)  # b's ran out: a takes over
    store.close()
