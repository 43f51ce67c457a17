"""SIGTERM drains: /ready turns 503, new requests get 503, open streams finish (or, past the
grace period, end with an error event), and the process exits 0. The server runs as a real
subprocess (`python -m cormorant.server.launch`) so it can be signalled."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from support import wait_http_ready
from server_helpers import assert_openai_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(model: str, grace_s: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cormorant.server.launch", "--model", model, "--port", str(port),
         "--max-model-len", "1024", "--num-kv-blocks", "512", "--drain-grace-s", str(grace_s),
         "--log-level", "warning"], cwd=ROOT, env=env)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def servers(tiny_llama):
    """Two servers, started side by side to halve the start-up wait: a long grace period and
    one far too short for the streams it will have open."""
    spawned = {"patient": _spawn(tiny_llama, grace_s=60), "hasty": _spawn(tiny_llama, 0.5)}
    try:
        for proc, url in spawned.values():
            wait_http_ready(url, proc, timeout=120, probe_timeout=1)
        yield spawned
    finally:
        for proc, _ in spawned.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _consume(stream, out: dict, key: int) -> None:
    try:
        reason = None
        for chunk in stream:
            for choice in chunk.choices:
                reason = choice.finish_reason or reason
        out[key] = reason
    except openai.APIError as exc:
        out[key] = exc


def _open_streams(url: str, model: str, max_tokens: int, count: int):
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    streams = []
    for i in range(count):
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Story {i}"}],
            max_tokens=max_tokens, stream=True, extra_body={"ignore_eos": True})
        it = iter(stream)
        next(it)  # role chunk
        next(it)  # first content: generation is under way
        streams.append(it)
    results: dict = {}
    threads = [threading.Thread(target=_consume, args=(it, results, i))
               for i, it in enumerate(streams)]
    for t in threads:
        t.start()
    return client, results, threads


def test_sigterm_lets_streams_finish(servers):
    proc, url = servers["patient"]
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    client, results, threads = _open_streams(url, model, max_tokens=150, count=3)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while httpx.get(url + "/ready").status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.get(url + "/health").status_code == 200  # alive while draining
    refused = httpx.post(url + "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(refused, 503)
    assert "retry-after" in refused.headers
    for t in threads:
        t.join(timeout=60)
    assert results == {0: "length", 1: "length", 2: "length"}
    assert proc.wait(timeout=30) == 0


def test_sigterm_past_grace_ends_streams_with_error(servers):
    proc, url = servers["hasty"]
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    # Far more tokens than the grace period allows on this model.
    client, results, threads = _open_streams(url, model, max_tokens=1000, count=2)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=30)
    assert all(isinstance(r, openai.APIError) for r in results.values()), results
    assert "shut down" in str(results[0])
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 15
