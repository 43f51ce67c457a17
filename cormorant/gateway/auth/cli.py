"""`cormorant keys create | list | revoke | rotate`: manage API keys.

In the key database (or a JSON key file). A running server picks the change up within its
refresh interval, no restart.
`create` and `rotate` print the token once; nothing else ever prints it, and the store keeps
only its salted digest. `set-cache-group` moves a key into a shared prefix-cache namespace
(gateway.auth.keys.prefix_cache_salt) or back to its own. `add_keys_args(parser)` and
`run_keys(args) -> int` are what cormorant.cli wires in; `python -m cormorant.gateway.auth.cli`
runs it alone.
Imports the stdlib and gateway.auth.{keys,keystore}.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from cormorant.gateway.auth.keys import (ALL_SCOPES, SCOPE_INFERENCE, KeyRecord, create_key,
                                         rotate_key)
from cormorant.gateway.auth.keystore import (DEFAULT_KEYS_DB, FileKeyStore, SqliteKeyStore,
                                             write_key_file)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_keys_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys-db", default=os.environ.get("CORMORANT_KEYS_DB",
                                                            str(DEFAULT_KEYS_DB)),
                        help="SQLite key database (default: $CORMORANT_KEYS_DB or %(default)s)")
    parser.add_argument("--keys-file", default=None,
                        help="manage this JSON key file instead of the database")
    sub = parser.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", action="append", default=None,
                        help=f"one of {', '.join(sorted(ALL_SCOPES))}; repeat or comma-separate "
                        f"(default: {SCOPE_INFERENCE})")
    create.add_argument("--model", action="append", default=None,
                        help="allow only this model; repeat for several (default: all)")
    create.add_argument("--expires-in", default=None, help="e.g. 3600, 30m, 12h, 90d")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    create.add_argument("--max-concurrent", type=int, default=None)
    create.add_argument("--weight", type=float, default=1.0, help="fair-queue share")
    create.add_argument("--tenant", default="", help="group keys for quotas (default: key id)")
    create.add_argument("--cache-group", default="", metavar="NAME",
                        help="share a prefix-cache namespace with the other keys of this group "
                        "(default: the key's own; docs/operations.md)")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print one JSON object per line")
    revoke = sub.add_parser("revoke", help="disable a key for good")
    revoke.add_argument("key_id")
    rotate = sub.add_parser("rotate", help="new secret, same id and settings")
    rotate.add_argument("key_id")
    rotate.add_argument("--json", action="store_true")
    group = sub.add_parser("set-cache-group", help="move a key to a prefix-cache group "
                           "('' for its own namespace)")
    group.add_argument("key_id")
    group.add_argument("cache_group", metavar="NAME")


def parse_duration(text: str) -> float:
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    value = float(number) * _UNITS.get(unit, 1)
    if value <= 0:
        raise ValueError("the duration must be positive")
    return value


class _KeyFile:
    """The CLI's writable view of a JSON key file (the server only reads it)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            write_key_file(path, [])
        self.store = FileKeyStore(path, refresh_s=0.0)

    def records(self) -> list[KeyRecord]:
        return self.store.records()

    def get(self, key_id: str) -> KeyRecord | None:
        return self.store.get(key_id)

    def add(self, record: KeyRecord) -> None:
        self.store.write([*self.records(), record])

    def replace(self, record: KeyRecord) -> None:
        records = self.records()
        if not any(r.key.key_id == record.key.key_id for r in records):
            raise KeyError(record.key.key_id)
        self.store.write([record if r.key.key_id == record.key.key_id else r for r in records])


def _open(args: argparse.Namespace):
    if args.keys_file:
        return _KeyFile(Path(args.keys_file).expanduser())
    return SqliteKeyStore(args.keys_db, refresh_s=0.0)


def _status(record: KeyRecord, now: float) -> str:
    if record.key.revoked:
        return "revoked"
    return "expired" if record.key.is_expired(now) else "active"


def _describe(record: KeyRecord, now: float) -> dict:
    key = record.key
    out = dataclasses.asdict(key)
    out["scopes"] = sorted(key.scopes)
    out["allowed_models"] = None if key.allowed_models is None else sorted(key.allowed_models)
    out["status"] = _status(record, now)
    return out


def _scopes(values: list[str] | None) -> frozenset[str]:
    scopes = {s.strip() for v in (values or [SCOPE_INFERENCE]) for s in v.split(",") if s.strip()}
    unknown = scopes - ALL_SCOPES
    if unknown or not scopes:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown)) or '(none)'}; "
                         f"choose from {', '.join(sorted(ALL_SCOPES))}")
    return frozenset(scopes)


def _print_token(record: KeyRecord, token: str, as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps({**_describe(record, time.time()), "key": token}))
        return
    key = record.key
    print(f"{verb} key {key.key_id} ({key.name}), scopes: {', '.join(sorted(key.scopes))}")
    print(token)
    print("This is the only time the key is shown; store it now.", file=sys.stderr)


def _cmd_create(store, args: argparse.Namespace) -> int:
    expires_at = time.time() + parse_duration(args.expires_in) if args.expires_in else None
    record, token = create_key(
        args.name, _scopes(args.scope),
        allowed_models=frozenset(args.model) if args.model else None, expires_at=expires_at,
        rpm=args.rpm, tpm=args.tpm, max_concurrent=args.max_concurrent, weight=args.weight,
        tenant=args.tenant, cache_group=args.cache_group)
    store.add(record)
    _print_token(record, token, args.json, "created")
    return 0


def _cmd_list(store, args: argparse.Namespace) -> int:
    now = time.time()
    records = store.records()
    if args.json:
        for record in records:
            print(json.dumps(_describe(record, now)))
        return 0
    print(f"{'KEY ID':<14}{'NAME':<20}{'SCOPES':<28}{'STATUS':<9}{'EXPIRES':<22}MODELS")
    for record in records:
        key = record.key
        expires = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(key.expires_at))
                   if key.expires_at else "never")
        models = ",".join(sorted(key.allowed_models)) if key.allowed_models else "*"
        print(f"{key.key_id:<14}{key.name[:19]:<20}{','.join(sorted(key.scopes)):<28}"
              f"{_status(record, now):<9}{expires:<22}{models}")
    return 0


def _find(store, key_id: str):
    """The key's record, or None after saying on stderr that there is no such key."""
    record = store.get(key_id)
    if record is None:
        print(f"cormorant keys: no key with id {key_id!r}", file=sys.stderr)
    return record


def _cmd_revoke(store, args: argparse.Namespace) -> int:
    record = _find(store, args.key_id)
    if record is None:
        return 1
    if not record.key.revoked:
        store.replace(dataclasses.replace(
            record, key=dataclasses.replace(record.key, revoked=True)))
    print(f"revoked key {args.key_id}")
    return 0


def _cmd_rotate(store, args: argparse.Namespace) -> int:
    record = _find(store, args.key_id)
    if record is None:
        return 1
    if record.key.revoked:
        print(f"cormorant keys: key {args.key_id} is revoked; create a new one",
              file=sys.stderr)
        return 1
    new_record, token = rotate_key(record)
    store.replace(new_record)
    _print_token(new_record, token, args.json, "rotated")
    return 0


def _cmd_set_cache_group(store, args: argparse.Namespace) -> int:
    record = _find(store, args.key_id)
    if record is None:
        return 1
    key = dataclasses.replace(record.key, cache_group=args.cache_group)
    store.replace(dataclasses.replace(record, key=key))
    print(f"key {args.key_id}: prefix-cache namespace "
          f"{'group ' + args.cache_group if args.cache_group else 'of its own'}")
    return 0


_COMMANDS = {"create": _cmd_create, "list": _cmd_list, "revoke": _cmd_revoke,
             "rotate": _cmd_rotate, "set-cache-group": _cmd_set_cache_group}


def run_keys(args: argparse.Namespace) -> int:
    try:
        store = _open(args)
        return _COMMANDS[args.keys_command](store, args)
    except ValueError as exc:
        print(f"cormorant keys: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cormorant keys", description=__doc__)
    add_keys_args(parser)
    return run_keys(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
