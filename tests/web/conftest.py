"""Fixtures for the browser tests: real headless Chromium (Debian's, driven by Playwright)
against real cormorant servers on tiny models: an open one (no keys, response cache on) and
a keyed multi-model one (a swappable alias, an admin key).

Screenshots go to $CORMORANT_WEB_ARTIFACTS (default: tests/web/artifacts/, ignored by git).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from server_helpers import (ServerThread, running_engine,  # noqa: E402
                            running_server)
from web_helpers import CHROMIUM, CHROMIUM_ARGS, DESKTOP  # noqa: E402

ARTIFACTS = Path(os.environ.get("CORMORANT_WEB_ARTIFACTS",
                                Path(__file__).resolve().parent / "artifacts"))


@pytest.fixture(scope="module")  # the sync API holds an event loop: end it with the module
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (scripts/setup.sh --test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def web_model(tmp_path_factory):
    """A tiny random Llama a little deeper than the shared one, so a long answer takes long
    enough (a second or more on a CPU) to be stopped half-way."""
    import tiny

    return str(tiny.save_model(tmp_path_factory.mktemp("web-llama"), "llama",
                               hidden_size=128, intermediate_size=256, num_hidden_layers=6))


@pytest.fixture(scope="session")
def open_server(web_model):
    """No keys (the playground is public), the exact response cache on."""
    with running_engine(web_model) as llm, running_server(llm, response_cache=True) as server:
        yield server


def _registry(root: Path) -> dict:
    engine = {"num_kv_blocks": 512, "max_model_len": 512, "max_num_seqs": 8}

    def tiny(name: str, version: str, **extra) -> dict:
        return {"name": name, "version": version, "source": "tiny-llama", "dtype": "float32",
                "device": "cpu", "engine": dict(engine), **extra}

    return {"server": {"roots": [str(root)], "drain_timeout_s": 10},
            "models": [tiny("chat", "1"), tiny("chat", "2", load="on_demand")],
            "aliases": {"live": "chat@1"}}


class WebKeys:
    """Keys in a key file: alice and bob (inference), admin (inference, admin, metrics) and
    ops (admin only: the console's tables but not its charts)."""

    def __init__(self, path: Path) -> None:
        from cormorant.gateway.auth.keys import create_key
        from cormorant.gateway.auth.keystore import write_key_file

        records = []
        for name, scopes in (("alice", {"inference"}), ("bob", {"inference"}),
                             ("admin", {"inference", "admin", "metrics"}), ("ops", {"admin"})):
            record, token = create_key(name, frozenset(scopes), tenant=name)
            records.append(record)
            setattr(self, name, token)
        write_key_file(path, records)
        self.path = str(path)


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory, tiny_llama):
    """Keys in a key file (WebKeys), two versions of a tiny model and the alias `live`
    pointing at the first."""
    from cormorant.hosting.registry import registry_from_dict, resolve_source
    from cormorant.hosting.loader import load_object

    root = tmp_path_factory.mktemp("web-root")
    shutil.copytree(tiny_llama, root / "tiny-llama")
    keys = WebKeys(tmp_path_factory.mktemp("web-keys") / "keys.json")
    registry = registry_from_dict(_registry(root))
    loaded = {spec.id: load_object(spec, resolve_source(spec.source, registry.settings.roots))
              for spec in registry.specs.values() if spec.load == "startup"}
    server = ServerThread(None, registry=registry, loaded=loaded, loader=load_object,
                          keys_file=keys.path).start(timeout=120)
    server.keys = keys
    yield server
    server.stop()
    server.app.state.cormorant.pool.shutdown_now()


@pytest.fixture(scope="module")
def smollm2_server():
    """The README's main command, `python -m cormorant serve`, as its own process on the
    embedded SmolLM2-135M-Instruct: answers worth a screenshot."""
    import signal
    import socket
    import subprocess
    from types import SimpleNamespace

    from support import wait_http_ready

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "cormorant", "serve", "--port", str(port),
                             "--seed", "0", "--max-model-len", "1024"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_http_ready(url, proc, timeout=300, interval=0.5)
    yield SimpleNamespace(url=url)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
