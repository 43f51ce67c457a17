"""`cormorant keys create | list | revoke | rotate`, run as a separate process the way an
operator would: the token is printed once, never listed, never stored in clear."""
from __future__ import annotations

import json
import re

from cormorant.gateway.auth.keys import parse_token

TOKEN = re.compile(r"crm-[0-9a-f]{12}-[A-Za-z0-9]{43}")


def test_create_prints_the_token_once_and_list_never_does(keys_command, tmp_path):
    created = keys_command("create", "--name", "alice", "--scope", "inference,metrics",
                       "--model", "m1", "--model", "m2", "--expires-in", "2h", "--rpm", "10",
                       "--tpm", "5000", "--max-concurrent", "3", "--weight", "2", "--tenant",
                       "acme", "--json")
    info = json.loads(created.stdout)
    token = info.pop("key")
    assert TOKEN.fullmatch(token) and parse_token(token)[0] == info["key_id"]
    assert info["scopes"] == ["inference", "metrics"] and info["allowed_models"] == ["m1", "m2"]
    assert (info["rpm"], info["tpm"], info["max_concurrent"], info["weight"], info["tenant"]) \
        == (10, 5000, 3, 2.0, "acme")
    assert info["status"] == "active" and info["expires_at"] > info["created_at"] + 7000
    secret = parse_token(token)[1]
    for args in (("list",), ("list", "--json")):
        out = keys_command(*args)
        assert info["key_id"] in out.stdout and secret not in out.stdout + out.stderr
    assert secret.encode() not in (tmp_path / "keys.db").read_bytes()


def test_plain_create_output(keys_command):
    out = keys_command("create", "--name", "bob")
    tokens = TOKEN.findall(out.stdout)
    assert len(tokens) == 1 and "inference" in out.stdout
    assert "only time" in out.stderr


def test_revoke_and_rotate(keys_command):
    info = json.loads(keys_command("create", "--name", "carol", "--rpm", "7", "--json").stdout)
    rotated = json.loads(keys_command("rotate", info["key_id"], "--json").stdout)
    assert rotated["key_id"] == info["key_id"] and rotated["rpm"] == 7
    assert rotated["key"] != info["key"]
    keys_command("revoke", info["key_id"])
    listed = [json.loads(line) for line in keys_command("list", "--json").stdout.splitlines()]
    assert [k["status"] for k in listed if k["key_id"] == info["key_id"]] == ["revoked"]
    refused = keys_command("rotate", info["key_id"], check=False)
    assert refused.returncode == 1 and "revoked" in refused.stderr
    keys_command("revoke", info["key_id"])  # idempotent


def test_unknown_id_and_bad_input(keys_command):
    for command in ("revoke", "rotate"):
        proc = keys_command(command, "000000000000", check=False)
        assert proc.returncode == 1 and "no key" in proc.stderr
    bad_scope = keys_command("create", "--name", "x", "--scope", "root", check=False)
    assert bad_scope.returncode == 2 and "unknown scope" in bad_scope.stderr
    bad_expiry = keys_command("create", "--name", "x", "--expires-in", "-5m", check=False)
    assert bad_expiry.returncode == 2


def test_key_file_target(keys_command, tmp_path):
    path = tmp_path / "keys.json"
    info = json.loads(keys_command("--keys-file", str(path), "create", "--name", "dan",
                               "--json").stdout)
    stored = json.loads(path.read_text())["keys"]
    assert [k["key_id"] for k in stored] == [info["key_id"]]
    assert parse_token(info["key"])[1] not in path.read_text()
    keys_command("--keys-file", str(path), "revoke", info["key_id"])
    assert json.loads(path.read_text())["keys"][0]["revoked"] is True
    assert (path.stat().st_mode & 0o077) == 0
