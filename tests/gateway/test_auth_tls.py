"""TLS (--ssl-certfile/--ssl-keyfile): the real app served through server.launch's uvicorn
configuration with a self-signed certificate made at test time, and the flag checks that run
before any model is loaded."""
from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from cormorant.server.app import build_app
from cormorant.server.config import ServerConfig
from cormorant.server.launch import main as launch_main
from cormorant.server.launch import uvicorn_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import start_engine, tiny_engine_config  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_llama):
    llm = start_engine(tiny_engine_config(tiny_llama))
    yield llm
    llm.shutdown()


def test_https_with_keys(engine, self_signed_cert, make_key, keys_db, check_error,
                         server_thread):
    certfile, keyfile = self_signed_cert
    token = make_key()
    config = ServerConfig(served_model_name="tiny-tls", keys_db=str(keys_db.path),
                          keys_refresh_s=0.0, ssl_certfile=certfile, ssl_keyfile=keyfile)
    server = server_thread(config=uvicorn_config(build_app(engine, config), config, "warning"))
    server.start()
    try:
        assert server.url.startswith("https://")
        assert server.get("/health").status_code == 200
        check_error(server.get("/v1/models"), 401, "missing_api_key")
        assert server.get("/v1/models", token).json()["data"][0]["id"] == "tiny-tls"
        with pytest.raises(httpx.ConnectError):  # our own CA is needed to trust it
            httpx.get(server.url + "/health", timeout=10)
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(server.url.replace("https", "http") + "/health", timeout=10)
    finally:
        server.stop()


@pytest.mark.parametrize("args,message", [
    (["--ssl-certfile", "/etc/hostname"], "go together"),
    (["--ssl-keyfile", "/etc/hostname"], "go together"),
    (["--ssl-certfile", "/nonexistent.pem", "--ssl-keyfile", "/nonexistent.key"], "no such file"),
    (["--keys-file", "/nonexistent.json"], "no such file"),
])
def test_bad_auth_flags_fail_before_loading_a_model(args, message, capsys):
    assert launch_main([*args, "--model", "/nonexistent"]) == 2
    assert message in capsys.readouterr().err


def test_a_key_database_counts_as_auth_for_a_public_bind(tmp_path, capsys):
    assert launch_main(["--host", "0.0.0.0", "--model", "/nonexistent"]) == 2
    assert "--keys-db" in capsys.readouterr().err
    # With a key database the bind is allowed: it gets as far as loading the (missing) model.
    with pytest.raises(Exception) as info:
        launch_main(["--host", "0.0.0.0", "--keys-db", str(tmp_path / "keys.db"),
                     "--model", "/nonexistent"])
    assert "nonexistent" in str(info.value)
    assert "refusing" not in capsys.readouterr().err
