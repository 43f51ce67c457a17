"""Two real `cormorant serve` processes (tiny random Llama) share one quota through a real
redis-server: the limit holds across both, and each one's x-ratelimit headers count what the
other admitted. Also: a --redis that does not answer stops `serve` at once."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from support import wait_http_ready
from redis_fixture import free_port, redis_server  # noqa: F401

RPM = 6


def _serve(model: str, port: int, redis_url: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cormorant", "--log-level", "warning", "serve",
           "--model", model, "--port", str(port), "--redis", redis_url,
           "--default-rpm", str(RPM), "--default-tpm", "100000", "--num-kv-blocks", "256",
           "--max-model-len", "512", "--usage-db", ":memory:", "--device", "cpu"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def two_servers(tiny_llama, redis_server):
    # A database of this test's own: the servers use the default key prefix.
    redis_url = f"redis://127.0.0.1:{redis_server.port}/5"
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    ports = [free_port(), free_port()]
    procs = [_serve(tiny_llama, port, redis_url) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, proc in zip(urls, procs):
            wait_http_ready(url, proc, timeout=180, interval=0.2)
        yield urls
    finally:
        for proc in procs:
            _stop(proc)


def test_two_processes_share_one_quota(two_servers):
    model = httpx.get(two_servers[0] + "/v1/models").json()["data"][0]["id"]
    responses = []
    for i in range(10):  # alternate between the two processes
        responses.append(httpx.post(two_servers[i % 2] + "/v1/completions", timeout=60, json={
            "model": model, "prompt": "Hello", "max_tokens": 2}))
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * RPM + [429] * (10 - RPM)
    # Each process's headers count the requests the other one admitted.
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses[:RPM]] == \
        [str(RPM - 1 - i) for i in range(RPM)]
    for refused in responses[RPM:]:
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-tokens"] == "100000"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_unreachable_redis_stops_serve_at_once(tiny_llama):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cormorant", "serve", "--model", tiny_llama,
         "--port", str(free_port()), "--redis", f"redis://:secret@127.0.0.1:{free_port()}/0"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--redis" in proc.stderr and "cannot reach Redis" in proc.stderr
    assert "secret" not in proc.stderr  # the password never reaches a log
    assert time.monotonic() - started < 60
