"""Prefix-cache namespaces of API keys: each key its own, keys of one `cache_group` sharing one,
a request's own cache_salt narrowing (never leaving) its key's namespace; the group attribute
in the SQLite database (old databases gain the column), the key file and `cormorant keys`."""
from __future__ import annotations

import json
import sqlite3

import pytest

from cormorant.gateway.auth.keys import (ApiKey, Principal, create_key, parse_token,
                                         prefix_cache_salt)
from cormorant.gateway.auth.keystore import FileKeyStore, SqliteKeyStore, write_key_file


def principal(key_id: str, group: str = "") -> Principal:
    return Principal.from_key(ApiKey(key_id, key_id, frozenset({"inference"}),
                                     cache_group=group))


def test_each_key_is_its_own_namespace_unless_grouped():
    a, b = principal("aaaaaaaaaaaa"), principal("bbbbbbbbbbbb")
    assert prefix_cache_salt(a) != prefix_cache_salt(b)
    assert prefix_cache_salt(a) == prefix_cache_salt(principal("aaaaaaaaaaaa"))
    ga, gb = principal("aaaaaaaaaaaa", "team"), principal("bbbbbbbbbbbb", "team")
    assert prefix_cache_salt(ga) == prefix_cache_salt(gb) != prefix_cache_salt(a)
    assert prefix_cache_salt(principal("cccccccccccc", "other")) != prefix_cache_salt(ga)
    # No keys: the engine's shared unsalted namespace, as before salts existed.
    assert prefix_cache_salt(Principal.anonymous()) == ""
    assert prefix_cache_salt(Principal.static()) not in ("", prefix_cache_salt(a))


def test_a_request_salt_narrows_but_never_leaves_the_namespace():
    a, b = principal("aaaaaaaaaaaa"), principal("bbbbbbbbbbbb")
    anonymous = Principal.anonymous()
    assert prefix_cache_salt(a, "x") != prefix_cache_salt(a) != ""
    assert prefix_cache_salt(a, "x") == prefix_cache_salt(a, "x") != prefix_cache_salt(a, "y")
    assert prefix_cache_salt(anonymous, "x") not in ("", prefix_cache_salt(anonymous, "y"))
    # Whatever b sends, it cannot produce a's salts (guessing the namespace string included).
    for guess in ("", "x", "key:aaaaaaaaaaaa", '"key:aaaaaaaaaaaa", "x"', "aaaaaaaaaaaa"):
        assert prefix_cache_salt(b, guess) not in (prefix_cache_salt(a),
                                                   prefix_cache_salt(a, "x"))
    assert prefix_cache_salt(a, "\ud800")  # a lone surrogate still hashes


def test_cache_group_names_are_checked():
    for bad in ("has space", "x" * 65, "slash/", "new\nline"):
        with pytest.raises(ValueError, match="cache group"):
            create_key("bad", cache_group=bad)
    record, _ = create_key("ok", cache_group="team-a.v1_2")
    assert record.key.cache_group == "team-a.v1_2"


def test_stores_keep_the_group(tmp_path):
    record, _ = create_key("grouped", cache_group="team-a")
    plain, _ = create_key("plain")
    db = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    db.add(record)
    db.add(plain)
    again = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    assert again.get(record.key.key_id).key.cache_group == "team-a"
    assert again.get(plain.key.key_id).key.cache_group == ""
    write_key_file(tmp_path / "keys.json", [record, plain])
    from_file = FileKeyStore(tmp_path / "keys.json", refresh_s=0.0)
    assert from_file.get(record.key.key_id).key == record.key
    db.close()
    again.close()


def old_database(path) -> None:
    """A key database as cormorant made it before cache groups."""
    conn = sqlite3.connect(path)
    conn.execute("""CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, allowed_models TEXT,
        expires_at REAL, rpm INTEGER, tpm INTEGER, max_concurrent INTEGER,
        weight REAL NOT NULL DEFAULT 1.0, tenant TEXT NOT NULL, created_at REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0, scheme TEXT NOT NULL, salt BLOB NOT NULL,
        digest BLOB NOT NULL)""")
    conn.execute("INSERT INTO api_keys VALUES ('0123456789ab', 'old', '[\"inference\"]', NULL,"
                 " NULL, NULL, NULL, NULL, 1.0, '0123456789ab', 0.0, 0, 'hmac-sha256', x'00',"
                 " x'00')")
    conn.commit()
    conn.close()


def test_an_older_database_gains_the_column(tmp_path, caplog):
    path = tmp_path / "old.db"
    old_database(path)
    # A writer holding the lock: the column cannot be added yet, the keys still load.
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    locked = SqliteKeyStore(path, refresh_s=0.0)
    assert locked.get("0123456789ab").key.cache_group == ""
    assert "could not add column cache_group" in caplog.text
    writer.execute("COMMIT")
    writer.close()
    locked.close()
    store = SqliteKeyStore(path, refresh_s=0.0)
    assert store.get("0123456789ab").key.cache_group == ""
    record, _ = create_key("new", cache_group="g")
    store.add(record)
    assert store.get(record.key.key_id).key.cache_group == "g"
    store.close()


def test_cli_creates_and_moves_keys_between_groups(keys_command):
    info = json.loads(keys_command("create", "--name", "a", "--cache-group", "team-a",
                               "--json").stdout)
    assert info["cache_group"] == "team-a" and parse_token(info["key"])
    keys_command("set-cache-group", info["key_id"], "team-b")
    listed = [json.loads(line) for line in keys_command("list", "--json").stdout.splitlines()]
    assert [k["cache_group"] for k in listed if k["key_id"] == info["key_id"]] == ["team-b"]
    keys_command("set-cache-group", info["key_id"], "")
    listed = [json.loads(line) for line in keys_command("list", "--json").stdout.splitlines()]
    assert [k["cache_group"] for k in listed if k["key_id"] == info["key_id"]] == [""]
    refused = keys_command("create", "--name", "b", "--cache-group", "no spaces", check=False)
    assert refused.returncode == 2 and "cache group" in refused.stderr
    missing = keys_command("set-cache-group", "ffffffffffff", "g", check=False)
    assert missing.returncode == 1
