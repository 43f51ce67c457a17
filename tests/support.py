"""Helpers shared across the test folders: polling, and key databases with keys in them."""
from __future__ import annotations

import subprocess
import time

import httpx

from cormorant.gateway.auth.keys import create_key
from cormorant.gateway.auth.keystore import SqliteKeyStore


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """The first truthy result of `predicate()` within `timeout` seconds; AssertionError after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def wait_http_ready(url: str, proc: subprocess.Popen, timeout: float, interval: float = 0.1,
                    probe_timeout: float = 2.0) -> None:
    """Until GET url/ready answers 200; AssertionError if `proc` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read()[-2000:] if proc.stderr is not None else ""
            raise AssertionError(f"server exited during start-up ({proc.returncode}): {stderr}")
        try:
            if httpx.get(url + "/ready", timeout=probe_timeout).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise AssertionError("server did not become ready")


def store_keys(db, keys) -> tuple[SqliteKeyStore, dict[str, str], dict[str, str]]:
    """A key database at `db` holding `keys`, (name, scopes, create_key settings) each: the
    open store, name -> token and name -> key id."""
    store = SqliteKeyStore(db, refresh_s=0.0)
    tokens, ids = {}, {}
    for name, scopes, settings in keys:
        record, tokens[name] = create_key(name, frozenset(scopes), **settings)
        ids[name] = record.key.key_id
        store.add(record)
    return store, tokens, ids
