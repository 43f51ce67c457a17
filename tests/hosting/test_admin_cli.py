"""`cormorant models ...` against a real server: the real app with a model registry (a tiny
random Llama under a model root, loaded for real on the CPU), served by uvicorn on a loopback
port, driven by the CLI in this process and as a separate process like an operator's shell."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cormorant.hosting.admin_cli import (add_models_args, format_split, parse_targets, parse_value,
                                         run_models)
from cormorant.hosting.loader import load_object
from cormorant.hosting.registry import registry_from_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import ServerThread  # noqa: E402

ADMIN_KEY = "sk-admin-test"
TINY = {"source": "tiny-llama", "engine": {"num_kv_blocks": 64, "max_model_len": 256},
        "dtype": "float32", "device": "cpu"}


@pytest.fixture(scope="module")
def admin_server(tiny_llama, tmp_path_factory):
    """A real server whose registry knows tiny@1 (not loaded); yields its URL."""
    root = tmp_path_factory.mktemp("model-root")
    # A copy, not a symlink: a link out of the root resolves outside it and is refused.
    shutil.copytree(tiny_llama, root / "tiny-llama")
    registry = registry_from_dict({"server": {"roots": [str(root)]},
                                   "models": [{"name": "tiny", "version": "1", **TINY}]})
    server = ServerThread(None, registry=registry, loaded={}, loader=load_object,
                          api_key=ADMIN_KEY).start()
    yield server.url
    pool = server.app.state.cormorant.pool
    server.stop()
    for deployment in list(pool.deployments.values()):  # engine threads of what is loaded
        deployment.served.shutdown()


def cli(url: str, *argv: str, key: str | None = ADMIN_KEY, capsys=None) -> tuple[int, str, str]:
    """Run `cormorant models` in this process -> (exit status, stdout, stderr)."""
    import argparse

    parser = argparse.ArgumentParser(prog="cormorant models")
    add_models_args(parser)
    auth = ["--api-key", key] if key is not None else []
    capsys.readouterr()
    code = run_models(parser.parse_args(["--url", url, *auth, *argv]))
    out, err = capsys.readouterr()
    return code, out, "".join(line + "\n" for line in _cli_lines(err))


def cli_process(url: str, *argv: str, key: str = ADMIN_KEY) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cormorant.hosting.admin_cli", "--url", url,
                           "--api-key", key, *argv], capture_output=True, text=True,
                          timeout=300)


def status(url: str, capsys) -> dict:
    code, out, err = cli(url, "list", "--json", capsys=capsys)
    assert code == 0, err
    return json.loads(out)


def model(state: dict, model_id: str) -> dict:
    return next(m for m in state["models"] if m["id"] == model_id)


def test_register_load_swap_canary_and_unload(admin_server, capsys):
    url = admin_server
    proc = cli_process(url, "list")  # a separate process, as an operator runs it
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["ID", "KIND", "LOADED", "MEMORY", "MiB", "IN", "FLIGHT"]
    assert lines[1].split() == ["tiny@1", "generate", "no", "0.0", "0"]
    assert "aliases: none" in lines and "memory: 0.0 MiB used / no budget" in lines

    code, out, err = cli(url, "load", "tiny@1", capsys=capsys)
    assert code == 0, err
    assert out.startswith("loaded tiny@1 (loaded, ")
    tiny1 = model(status(url, capsys), "tiny@1")
    assert tiny1["loaded"] and tiny1["memory_bytes"] > 0 and tiny1["instance"]

    engine = [f"--engine={k}={v}" for k, v in TINY["engine"].items()]
    code, out, err = cli(url, "register", "tiny@2", "tiny-llama", "--dtype", "float32",
                         "--device", "cpu", "--fallback", "tiny@1", *engine, "--no-load",
                         capsys=capsys)
    assert code == 0, err
    assert out.strip() == "registered tiny@2 (not loaded)"
    tiny2 = model(status(url, capsys), "tiny@2")
    assert tiny2["fallbacks"] == ["tiny@1"] and not tiny2["loaded"]

    code, out, err = cli(url, "alias", "chat", "tiny@2", capsys=capsys)  # a swap: loads tiny@2
    assert code == 0, err
    assert out.strip() == "chat -> tiny@2 100%"
    state = status(url, capsys)
    assert state["aliases"] == {"chat": {"tiny@2": 100.0}}
    assert model(state, "tiny@2")["loaded"] and model(state, "tiny@2")["memory_bytes"] > 0

    proc = cli_process(url, "alias", "chat", "tiny@1=90", "tiny@2=10")  # a canary
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "chat -> tiny@1 90%, tiny@2 10%"
    code, out, err = cli(url, "list", capsys=capsys)
    assert code == 0, err
    assert "  chat -> tiny@1 90%, tiny@2 10%" in out.splitlines()
    table = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert table["tiny@1"][2] == table["tiny@2"][2] == "yes"
    assert float(table["tiny@1"][3]) > 0
    used = status(url, capsys)["memory_used_bytes"]
    assert f"memory: {used / 2**20:.1f} MiB used / no budget" in out

    code, out, err = cli(url, "remove", "tiny@2", capsys=capsys)  # still a target of chat
    assert code == 1 and out == ""
    assert _cli_lines(err) == ["cormorant models: 409 tiny@2 is loaded; unload it first."], err

    code, out, err = cli(url, "alias", "chat", "tiny@1", capsys=capsys)  # tiny@2 unloads
    assert code == 0, err
    assert not model(status(url, capsys), "tiny@2")["loaded"]
    code, out, err = cli(url, "unalias", "chat", capsys=capsys)
    assert code == 0 and out.strip() == "removed alias chat", err
    code, out, err = cli(url, "remove", "tiny@2", capsys=capsys)
    assert code == 0 and out.strip() == "removed tiny@2", err

    code, out, err = cli(url, "unload", "tiny@1", capsys=capsys)
    assert code == 0, err
    assert out.strip() == "unloaded tiny@1 (not loaded)"
    state = status(url, capsys)
    assert [m["id"] for m in state["models"]] == ["tiny@1"]
    assert not model(state, "tiny@1")["loaded"] and state["memory_used_bytes"] == 0
    assert state["aliases"] == {}


def test_a_source_outside_the_roots_is_refused(admin_server, capsys):
    code, out, err = cli(admin_server, "register", "evil@1", "../etc", "--no-load",
                         capsys=capsys)
    assert code == 1 and out == ""
    assert err.startswith("cormorant models: 400 ") and "'../etc'" in err, err
    assert "no '..'" in err and err.count("\n") == 1
    assert "evil@1" not in [m["id"] for m in status(admin_server, capsys)["models"]]


def test_server_errors_exit_1_with_status_and_message(admin_server, capsys):
    code, out, err = cli(admin_server, "load", "nope@1", capsys=capsys)
    assert (code, out) == (1, "")
    assert _cli_lines(err) == ["cormorant models: 404 Unknown model 'nope@1'."], err
    code, _, err = cli(admin_server, "unalias", "nothing", capsys=capsys)
    assert code == 1 and err.startswith("cormorant models: 404 "), err


def test_a_wrong_api_key_exits_1_with_401(admin_server, capsys):
    proc = cli_process(admin_server, "list", key="sk-wrong")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("cormorant models: 401 ") and "Traceback" not in proc.stderr
    code, _, err = cli(admin_server, "list", key=None, capsys=capsys)
    assert code == 1 and err.startswith("cormorant models: 401 "), err


def test_an_unreachable_server_exits_2_without_a_traceback(capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc = cli_process(url, "list")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"cormorant models: cannot reach {url}: ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    code, _, err = cli("ftp://127.0.0.1", "list", capsys=capsys)
    assert code == 2 and "http://" in err


def test_usage_errors_exit_2(admin_server, capsys):
    for argv in (["alias", "chat", "tiny@1=90", "tiny@2"], ["alias", "chat", "tiny@1=-1"],
                 ["alias", "chat", "tiny@1=x"], ["register", "tiny", "tiny-llama"],
                 ["register", "tiny@3", "tiny-llama", "--engine", "seed"]):
        code, out, err = cli(admin_server, *argv, capsys=capsys)
        assert code == 2 and out == "" and err.startswith("cormorant models: "), argv
    proc = cli_process(admin_server, "frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_the_cormorant_command_has_the_subcommand(admin_server):
    proc = subprocess.run([sys.executable, "-m", "cormorant", "models", "--url", admin_server,
                           "--api-key", ADMIN_KEY, "list", "--json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tiny@1" in [m["id"] for m in json.loads(proc.stdout)["models"]]


def test_model_ids_are_quoted_in_the_url(admin_server, capsys):
    # Unquoted, the space would not even make a valid request line.
    code, _, err = cli(admin_server, "load", "a b@1", capsys=capsys)
    assert code == 1 and _cli_lines(err) == ["cormorant models: 404 Unknown model 'a b@1'."], err


def test_values_and_targets_parse():
    assert [parse_value(v) for v in ("4096", "-2", "0.5", "true", "False", "eager", "nan")] \
        == [4096, -2, 0.5, True, False, "eager", "nan"]
    assert parse_targets(["a@1=90", "a@2=10"]) == {"a@1": 90.0, "a@2": 10.0}
    assert parse_targets(["a@2"]) == {"a@2": 100.0}
    assert format_split({"a@1": 2.0, "a@2": 1.0}) == "a@1 66.7%, a@2 33.3%"


def _cli_lines(err: str) -> list[str]:
    """The CLI's own stderr lines (the in-process server's JSON request log, which another
    test may have routed to stderr, is not the CLI's)."""
    return [line for line in err.splitlines() if not line.startswith("{")]
