"""API keys at rest: the token format, digests only in the stores, the key file formats, and
reloads that see another process's writes. The CLI itself is in test_auth_cli.py; the HTTP
rules in test_auth*.py."""
from __future__ import annotations

import json
import re
import time

import pytest

from cormorant.gateway.auth.keys import (ALL_SCOPES, ApiKey, Principal, create_key, parse_token,
                                         rotate_key, verify_token)
from cormorant.gateway.auth.keystore import FileKeyStore, SqliteKeyStore
from cormorant.gateway.auth.middleware import Authenticator

TOKEN = re.compile(r"^crm-[0-9a-f]{12}-[A-Za-z0-9]{43}$")


def test_token_format_and_verification():
    record, token = create_key("alice", {"inference"}, rpm=60, weight=2.0)
    assert TOKEN.match(token)
    key_id, secret = parse_token(token)
    assert key_id == record.key.key_id and secret not in repr(record)
    assert verify_token(record, token)
    assert not verify_token(record, token[:-1] + ("a" if token[-1] != "a" else "b"))
    assert record.key.tenant == key_id  # a key is its own tenant unless told otherwise
    assert parse_token("sk-not-ours") is None


def test_rotate_keeps_id_and_settings_and_invalidates_old_token():
    record, old = create_key("bob", {"inference", "metrics"}, allowed_models={"m"}, tpm=1000)
    new_record, new = rotate_key(record)
    assert new_record.key == record.key and new != old
    assert verify_token(new_record, new) and not verify_token(new_record, old)


def test_unknown_scope_is_refused():
    with pytest.raises(ValueError, match="unknown scope"):
        create_key("x", {"inference", "root"})


def test_principal_carries_the_quotas_the_gateway_reads():
    key = ApiKey(key_id="abc", name="n", scopes=frozenset({"inference"}), rpm=1, tpm=2,
                 max_concurrent=3, weight=0.5, tenant="acme", allowed_models=frozenset({"m"}))
    p = Principal.from_key(key)
    assert (p.key_id, p.tenant, p.rpm, p.tpm, p.max_concurrent, p.weight) == \
        ("abc", "acme", 1, 2, 3, 0.5)
    assert p.may_use_model("m") and not p.may_use_model("other")
    assert Principal.anonymous().scopes == ALL_SCOPES
    assert Principal.unauthenticated().scopes == frozenset()


def test_sqlite_store_holds_digests_only(tmp_path):
    store = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    record, token = create_key("carol", {"admin"})
    store.add(record)
    store.close()
    data = (tmp_path / "keys.db").read_bytes()
    secret = parse_token(token)[1]
    assert secret.encode() not in data and token.encode() not in data
    reopened = SqliteKeyStore(tmp_path / "keys.db")
    assert reopened.get(record.key.key_id) == record
    assert (tmp_path / "keys.db").stat().st_mode & 0o077 == 0  # owner-only
    reopened.close()


def test_sqlite_store_sees_writes_of_another_connection(tmp_path):
    server_side = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    writer = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    record, token = create_key("dave", {"inference"})
    assert server_side.get(record.key.key_id) is None
    writer.add(record)
    assert server_side.get(record.key.key_id) == record
    auth = Authenticator([server_side])
    assert auth.authenticate(token).key_id == record.key.key_id
    rotated, new_token = rotate_key(record)
    writer.replace(rotated)
    assert auth.authenticate(token) is None and auth.authenticate(new_token) is not None
    writer.close(), server_side.close()


def test_refresh_interval_bounds_how_often_the_store_is_read(tmp_path):
    server_side = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.3)
    writer = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    server_side.get("warm")  # starts the interval
    record, _ = create_key("erin", {"inference"})
    writer.add(record)
    assert server_side.get(record.key.key_id) is None  # not looked for yet
    time.sleep(0.35)
    assert server_side.get(record.key.key_id) == record


def test_json_key_file_reload_and_bad_edit_keeps_last_good(tmp_path):
    path = tmp_path / "keys.json"
    record, token = create_key("frank", {"inference"}, expires_at=time.time() + 3600)
    from cormorant.gateway.auth.keystore import write_key_file
    write_key_file(path, [record])
    text = path.read_text()
    assert parse_token(token)[1] not in text and json.loads(text)["keys"][0]["salt"]
    store = FileKeyStore(path, refresh_s=0.0)
    auth = Authenticator([store])
    assert auth.authenticate(token).key_id == record.key.key_id
    path.write_text("{ not json")
    assert auth.authenticate(token) is not None  # a broken edit does not lock everyone out
    write_key_file(path, [])
    assert auth.authenticate(token) is None


def test_toml_key_file(tmp_path):
    record, token = create_key("gina", {"metrics"}, allowed_models={"m1", "m2"}, rpm=5)
    k = record.key
    path = tmp_path / "keys.toml"
    path.write_text(f"""
[[keys]]
key_id = "{k.key_id}"
name = "gina"
scopes = ["metrics"]
allowed_models = ["m1", "m2"]
rpm = 5
tenant = "acme"
created_at = {k.created_at}
scheme = "hmac-sha256"
salt = "{record.salt.hex()}"
digest = "{record.digest.hex()}"
""")
    principal = Authenticator([FileKeyStore(path)]).authenticate(token)
    assert principal.scopes == {"metrics"} and principal.tenant == "acme"
    assert principal.allowed_models == {"m1", "m2"} and principal.rpm == 5


def test_revoked_and_expired_keys_do_not_authenticate(tmp_path):
    store = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    now = [1000.0]
    auth = Authenticator([store], clock=lambda: now[0])
    record, token = create_key("hank", {"inference"}, expires_at=1060.0)
    store.add(record)
    assert auth.authenticate(token) is not None
    now[0] = 1060.0
    assert auth.authenticate(token) is None
    record2, token2 = create_key("ivy", {"inference"})
    store.add(record2)
    from dataclasses import replace
    store.replace(replace(record2, key=replace(record2.key, revoked=True)))
    assert auth.authenticate(token2) is None
    store.close()


def test_static_key_has_every_scope_and_coexists_with_stores(tmp_path):
    store = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    record, token = create_key("jo", {"inference"})
    store.add(record)
    auth = Authenticator([store], static_key="s3cret-static")
    assert auth.authenticate("s3cret-static").scopes == ALL_SCOPES
    assert auth.authenticate("s3cret-static").key_id == "static"
    assert auth.authenticate(token).key_id == record.key.key_id
    assert auth.authenticate("s3cret-statiX") is None
    store.close()


def test_a_deleted_or_replaced_store_takes_its_keys_with_it(tmp_path):
    from cormorant.gateway.auth.keystore import write_key_file

    record, token = create_key("kim", {"inference"})
    path = tmp_path / "keys.json"
    write_key_file(path, [record])
    file_auth = Authenticator([FileKeyStore(path, refresh_s=0.0)])
    assert file_auth.authenticate(token) is not None
    path.unlink()
    assert file_auth.authenticate(token) is None

    db = tmp_path / "keys.db"
    writer = SqliteKeyStore(db, refresh_s=0.0)
    writer.add(record)
    writer.close()
    server_side = SqliteKeyStore(db, refresh_s=0.0)
    db_auth = Authenticator([server_side])
    assert db_auth.authenticate(token) is not None
    db.unlink()  # our open handle could still read the unlinked file: it must not
    assert db_auth.authenticate(token) is None
    other, other_token = create_key("lee", {"inference"})
    fresh = SqliteKeyStore(db, refresh_s=0.0)  # a new database at the same path
    fresh.add(other)
    assert db_auth.authenticate(other_token) is not None
    assert db_auth.authenticate(token) is None
    fresh.close(), server_side.close()
