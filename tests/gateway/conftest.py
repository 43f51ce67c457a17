"""Fixtures for the gateway tests: a real key database, real uvicorn servers on loopback ports
(in threads) and a raw-socket HTTP client for requests httpx would normalise away.

`gateway_server(...)` serves a small FastAPI app whose routes mirror the route table and
echo the caller's principal, behind the real AuthMiddleware; the tests of the real cormorant
app (tiny model) live in test_auth_server.py.
"""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request

from cormorant.gateway.auth.keys import create_key
from cormorant.gateway.auth.keystore import SqliteKeyStore
from cormorant.gateway.auth.middleware import AuthMiddleware, Authenticator, get_principal
from cormorant.gateway.auth.routes import RouteTable


def echo_app() -> FastAPI:
    """Every route of the default table (and one the table lacks), answering with who called."""
    app = FastAPI(docs_url=None, redoc_url=None)

    async def who(request: Request) -> dict:
        p = get_principal(request)
        return {"path": request.url.path, "key_id": p.key_id, "tenant": p.tenant,
                "scopes": sorted(p.scopes), "anonymous": p.is_anonymous}

    for path in ("/health", "/ready", "/metrics", "/v1/models", "/v1/models/{model_id:path}",
                 "/admin/usage", "/undeclared"):
        app.add_api_route(path, who, methods=["GET"])
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
        app.add_api_route(path, who, methods=["POST"])
    return app


class ServerThread:
    """uvicorn (h11, as the real server runs it) serving `app` on 127.0.0.1:<own socket>;
    or, given `config` (e.g. server.launch.uvicorn_config of the real app), exactly that."""

    def __init__(self, app=None, *, root_path: str = "", ssl_certfile: str | None = None,
                 ssl_keyfile: str | None = None, config: uvicorn.Config | None = None) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when
        # proto says TCP; without it each response waits ~40 ms for a delayed ACK (Nagle).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if config is None:
            config = uvicorn.Config(app, log_level="warning", lifespan="on", http="h11",
                                    root_path=root_path, ssl_certfile=ssl_certfile,
                                    ssl_keyfile=ssl_keyfile)
        self.is_tls = config.ssl_certfile is not None
        self.url = f"{'https' if self.is_tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=config.ssl_certfile) if self.is_tls else True)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.started:
                return self
            time.sleep(0.02)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    def get(self, path: str, key: str | None = None, **kwargs) -> httpx.Response:
        return self.request("GET", path, key, **kwargs)

    def request(self, method: str, path: str, key: str | None = None, **kwargs
                ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.request(method, self.url + path, headers=headers, timeout=30,
                             verify=kwargs.pop("verify", self.verify), **kwargs)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(port: int, target: str, headers: dict[str, str] | None = None,
                method: str = "GET", host: str = "127.0.0.1") -> RawResponse:
    """One HTTP/1.1 request with the target sent byte for byte (no client-side cleanup)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method == "POST":
        lines += ["Content-Type: application/json", "Content-Length: 2"]
    payload = ("\r\n".join(lines) + "\r\n\r\n" + ("{}" if method == "POST" else "")).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return RawResponse(int(status_line.split()[1]), {k.lower(): v for k, v in parsed.items()},
                       body)


def assert_error(status: int, headers, body: bytes | dict, expect_status: int,
                 code: str | None = None) -> dict:
    """The OpenAI error shape with the expected status (and code)."""
    import json

    assert status == expect_status, (status, body)
    assert headers["content-type"].startswith("application/json")
    data = json.loads(body) if isinstance(body, bytes) else body
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert data["error"]["code"] == code, data
    return data["error"]


@pytest.fixture
def keys_db(tmp_path) -> SqliteKeyStore:
    store = SqliteKeyStore(tmp_path / "keys.db", refresh_s=0.0)
    yield store
    store.close()


@pytest.fixture
def make_key(keys_db):
    """make_key(name, scopes=..., **settings) -> token, stored in keys_db."""

    def make(name: str = "test", scopes=("inference",), **settings) -> str:
        record, token = create_key(name, frozenset(scopes), **settings)
        keys_db.add(record)
        return token

    return make


@pytest.fixture
def gateway_server(keys_db):
    """gateway_server(static_key=None, metrics_public=False, root_path="", auth=True, ...)
    -> a started ServerThread: echo_app behind AuthMiddleware reading keys_db."""
    servers: list[ServerThread] = []

    def start(static_key: str | None = None, metrics_public: bool = False, auth: bool = True,
              root_path: str = "", app=None, **tls) -> ServerThread:
        authenticator = Authenticator([keys_db], static_key) if auth else None
        wrapped = AuthMiddleware(app or echo_app(), authenticator,
                                 RouteTable(metrics_public=metrics_public))
        server = ServerThread(wrapped, root_path=root_path, **tls).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def keys_command(tmp_path):
    """keys_command(*args, db=...) -> CompletedProcess of `python -m cormorant.gateway.auth.cli`,
    a separate process like an operator's shell."""

    def run(*args: str, db=None, check: bool = True) -> subprocess.CompletedProcess:
        target = ["--keys-db", str(db or tmp_path / "keys.db")]
        if args and args[0] == "--keys-file":
            target, args = list(args[:2]), args[2:]
        proc = subprocess.run([sys.executable, "-m", "cormorant.gateway.auth.cli", *target,
                               *args], capture_output=True, text=True, timeout=60)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    return run


@pytest.fixture(scope="session")
def self_signed_cert(tmp_path_factory) -> tuple[str, str]:
    """(certfile, keyfile) for 127.0.0.1, made now with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)], capture_output=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {proc.stderr[-300:]!r}")
    ssl.create_default_context(cafile=str(cert))  # fails here if the PEM is unusable
    return str(cert), str(key)


@pytest.fixture
def raw():
    """raw(port, target, headers=None, method="GET", host=...) -> RawResponse."""
    return raw_request


@pytest.fixture
def check_error():
    """check_error(response_or_raw, status, code=None) -> the error object."""

    def check(response, status: int, code: str | None = None) -> dict:
        body = response.body if isinstance(response, RawResponse) else response.content
        status_code = getattr(response, "status", None) or response.status_code
        return assert_error(status_code, response.headers, body, status, code)

    return check


@pytest.fixture(scope="module")
def shared_gateway():
    """One echo_app server per module, authenticating only a static key (`.static_key`), for
    the many small requests that need no database."""
    server = ServerThread(AuthMiddleware(echo_app(), Authenticator([], "static-test-key")))
    server.static_key = "static-test-key"
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_thread():
    """The ServerThread class, for tests that build their own servers (`from conftest import`
    is ambiguous: tests/ and tests/server/ have conftest modules too)."""
    return ServerThread
