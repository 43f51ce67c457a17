"""A real redis-server for the gateway tests, started on a free loopback port.

`redis_server` (session scope) runs `redis-server` from the Debian package (installed by
scripts/setup.sh --test) without persistence, and kills it at teardown; the tests that need it
are skipped, saying why, only when the binary is absent. `redis_url` gives each test its own
database-wide key prefix so tests never see each other's counters.
Import the fixtures into a test module: `from redis_fixture import redis_server, redis_url`.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass

import pytest


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not answer PING")


def start_redis() -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; "
                    "scripts/setup.sh --test does it)")
    # A port taken between free_port() and the bind makes redis exit: try a few.
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_ready(port, process)
            return RedisServer(port, process)
        except RuntimeError:
            stop_redis(RedisServer(port, process))
    raise RuntimeError("could not start redis-server")


def stop_redis(server: RedisServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def redis_server():
    server = start_redis()
    yield server
    stop_redis(server)


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of one test's own."""
    return f"test:{uuid.uuid4().hex[:8]}:"
