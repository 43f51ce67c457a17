"""`cormorant models ...`: the command-line client of a running server's admin API.

Subcommands list, register, load, unload, reload, remove, alias and unalias call /admin/models
and /admin/aliases.
It talks HTTP to the server named by `--url` (default `$CORMORANT_URL`, else
http://127.0.0.1:8000) with an admin-scope key (`--api-key`, default `$CORMORANT_API_KEY`).
`alias chat smollm2@2` is a swap; `alias chat smollm2@1=90 smollm2@2=10` is a canary split.
Exit status: 0 done; 1 the server refused (its status and message on stderr); 2 a usage
error or a server that cannot be reached (one line, never a traceback). Redirects are not
followed, so the key is never sent anywhere but `--url`. `add_models_args(parser)` and
`run_models(args) -> int` are what cormorant.cli wires in; `python -m
cormorant.hosting.admin_cli` runs it alone. Imports the stdlib only.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
PROG = "cormorant models"
MIB = 1 << 20
_INT = re.compile(r"[+-]?[0-9]+")


class UsageError(Exception):
    """Bad arguments, or no answer from the server: exit status 2."""


class ServerError(Exception):
    """The server answered with an error: exit status 1."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")


def add_models_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("CORMORANT_URL") or DEFAULT_URL,
                        help="the server (default: $CORMORANT_URL or %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("CORMORANT_API_KEY"),
                        help="a key with the admin scope (default: $CORMORANT_API_KEY)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for an answer; a load can take minutes "
                        "(default: %(default)s)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the server's JSON answer")
    sub = parser.add_subparsers(dest="models_command", required=True)
    sub.add_parser("list", parents=[common], help="models, aliases and memory")
    reg = sub.add_parser("register", parents=[common], help="register a model version")
    reg.add_argument("model", metavar="NAME@VERSION")
    reg.add_argument("source", help="a source id under the server's model roots")
    reg.add_argument("--kind", choices=("generate", "embed"), default=None)
    reg.add_argument("--dtype", default=None, help="auto | float32 | float16 | bfloat16")
    reg.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    reg.add_argument("--fallback", action="append", default=[], metavar="NAME",
                     help="try this model when this one fails; repeat for several")
    reg.add_argument("--engine", action="append", default=[], metavar="KEY=VALUE",
                     help="an engine setting, e.g. max_model_len=4096; repeat for several")
    reg.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                     help="an admission limit, e.g. max_waiting_requests=64")
    reg.add_argument("--ray", action="append", default=[], metavar="KEY=VALUE",
                     help="its replicas under `serve --ray`, e.g. replicas=2")
    reg.add_argument("--memory", default=None, help="expected footprint, e.g. 6GiB")
    reg.add_argument("--no-load", action="store_true", help="register only; load on demand")
    for action, what in (("load", "load a model version (and warm it)"),
                         ("unload", "drain and unload a model version"),
                         ("reload", "load a fresh instance and swap it in"),
                         ("remove", "unregister an unloaded model version")):
        sub.add_parser(action, parents=[common], help=what).add_argument(
            "model_id", metavar="MODEL_ID")
    alias = sub.add_parser("alias", parents=[common],
                           help="point an alias at versions: a swap, or a canary split")
    alias.add_argument("alias", metavar="ALIAS")
    alias.add_argument("targets", nargs="+", metavar="TARGET[=WEIGHT]")
    alias.add_argument("--keep-replaced", action="store_true",
                       help="keep versions the alias no longer points at loaded")
    sub.add_parser("unalias", parents=[common], help="remove an alias").add_argument(
        "alias", metavar="ALIAS")


# --- argument parsing ----------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """'4096' -> 4096, '0.5' -> 0.5, 'true' -> True; anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(text.strip()):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def parse_settings(items: list[str], what: str) -> dict[str, Any]:
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} {item!r}: write KEY=VALUE")
        settings[key.strip()] = parse_value(value)
    return settings


def parse_targets(items: list[str]) -> dict[str, float]:
    """['a@1=90', 'a@2=10'] -> weights; without weights, an even split."""
    pairs = [item.rpartition("=")[::2] if "=" in item else (item, None) for item in items]
    given = [w is not None for _, w in pairs]
    if any(given) and not all(given):
        raise UsageError("give every target a weight, or none")
    targets: dict[str, float] = {}
    for target, weight in pairs:
        if not target:
            raise UsageError("a target needs a model id (NAME@VERSION)")
        try:
            value = 100.0 if weight is None else float(weight)
        except ValueError:
            raise UsageError(f"the weight of {target} is not a number: {weight!r}") from None
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"the weight of {target} must be a number >= 0")
        if target in targets:
            raise UsageError(f"{target} is named twice")
        targets[target] = value
    return targets


# --- HTTP --------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 3xx becomes an HTTPError
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _error_message(status: int, raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
        return str(error.get("message") or error.get("code") or error)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = " ".join(raw.decode("utf-8", "replace").split())
        return text[:300] or http.client.responses.get(status, "error")


def call(args: argparse.Namespace, method: str, path: str, body: dict | None = None) -> dict:
    """One request to the admin API -> its JSON answer (ServerError or UsageError if not)."""
    url = args.url.rstrip("/") + path
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UsageError(f"--url must start with http:// or https:// (got {args.url!r})")
    headers = {"Accept": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(request, timeout=args.timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            detail = exc.read(1 << 16)
        except (OSError, http.client.HTTPException):
            detail = b""
        finally:
            exc.close()
        raise ServerError(exc.code, _error_message(exc.code, detail)) from None
    except urllib.error.URLError as exc:
        raise UsageError(f"cannot reach {args.url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise UsageError(f"cannot reach {args.url}: {exc or type(exc).__name__}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise UsageError(f"{args.url} did not answer with JSON; is it a cormorant server?") \
            from None


def _model_path(model_id: str) -> str:
    return "/admin/models/" + urllib.parse.quote(model_id, safe="@")


def _alias_path(alias: str) -> str:
    return "/admin/aliases/" + urllib.parse.quote(alias, safe="")


# --- output ------------------------------------------------------------------------------

def _mib(num_bytes: int | None) -> str:
    return f"{(num_bytes or 0) / MIB:.1f}"


def format_split(targets: dict[str, float]) -> str:
    total = sum(targets.values()) or 1.0
    return ", ".join(f"{t} {round(100 * w / total, 1):g}%" for t, w in targets.items())


def format_status(status: dict) -> str:
    header = ("ID", "KIND", "LOADED", "MEMORY MiB", "IN FLIGHT")
    rows = [(m["id"], m["kind"], "yes" if m["loaded"] else "no", _mib(m["memory_bytes"]),
             str(m["in_flight"])) for m in status.get("models", [])]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in
                 enumerate(zip(row, widths))]
        lines.append("  ".join(cells))
    aliases = status.get("aliases") or {}
    lines.append("aliases:" if aliases else "aliases: none")
    lines += [f"  {alias} -> {format_split(targets)}" for alias, targets in aliases.items()]
    budget = status.get("memory_budget_bytes")
    lines.append(f"memory: {_mib(status.get('memory_used_bytes'))} MiB used / "
                 + (f"{_mib(budget)} MiB budget" if budget else "no budget"))
    return "\n".join(lines)


def _model(status: dict, model_id: str) -> dict | None:
    return next((m for m in status.get("models", []) if m["id"] == model_id), None)


def _state(status: dict, model_id: str) -> str:
    model = _model(status, model_id)
    if model is None:
        return "not registered"
    return f"loaded, {_mib(model['memory_bytes'])} MiB" if model["loaded"] else "not loaded"


# --- commands ----------------------------------------------------------------------------

def _cmd_list(args) -> tuple[dict, str]:
    status = call(args, "GET", "/admin/models")
    return status, format_status(status)


def _cmd_register(args) -> tuple[dict, str]:
    name, sep, version = args.model.partition("@")
    if not sep or not name or not version:
        raise UsageError(f"write the model as NAME@VERSION (got {args.model!r})")
    body: dict[str, Any] = {"name": name, "version": version, "source": args.source,
                            "load": not args.no_load}
    for key in ("kind", "dtype", "device", "memory"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.fallback:
        body["fallbacks"] = args.fallback
    if args.engine:
        body["engine"] = parse_settings(args.engine, "--engine")
    if args.limit:
        body["limits"] = parse_settings(args.limit, "--limit")
    if args.ray:
        body["ray"] = parse_settings(args.ray, "--ray")
    status = call(args, "POST", "/admin/models", body)
    return status, f"registered {args.model} ({_state(status, args.model)})"


def _cmd_action(args) -> tuple[dict, str]:
    action = args.models_command
    status = call(args, "POST", f"{_model_path(args.model_id)}/{action}")
    return status, f"{action}ed {args.model_id} ({_state(status, args.model_id)})"


def _cmd_remove(args) -> tuple[dict, str]:
    status = call(args, "DELETE", _model_path(args.model_id))
    return status, f"removed {args.model_id}"


def _cmd_alias(args) -> tuple[dict, str]:
    targets = parse_targets(args.targets)
    status = call(args, "PUT", _alias_path(args.alias),
                  {"targets": targets, "unload_replaced": not args.keep_replaced})
    now = (status.get("aliases") or {}).get(args.alias, targets)
    return status, f"{args.alias} -> {format_split(now)}"


def _cmd_unalias(args) -> tuple[dict, str]:
    status = call(args, "DELETE", _alias_path(args.alias))
    return status, f"removed alias {args.alias}"


_COMMANDS = {"list": _cmd_list, "register": _cmd_register, "load": _cmd_action,
             "unload": _cmd_action, "reload": _cmd_action, "remove": _cmd_remove,
             "alias": _cmd_alias, "unalias": _cmd_unalias}


def run_models(args: argparse.Namespace) -> int:
    try:
        status, text = _COMMANDS[args.models_command](args)
    except ServerError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2) if args.json else text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_models_args(parser)
    return run_models(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
