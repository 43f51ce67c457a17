"""`cormorant serve --engine-process` as a real process: the engine core runs in a child
process; the official client streams and gets the same greedy text as without the flag;
SIGTERM drains and exits 0 with no engine process left behind."""
from __future__ import annotations

import signal
import subprocess
import sys

import openai
import psutil

from test_serve_registry import ENV
from support import wait_http_ready
from test_server_drain import ROOT, _free_port


def _serve(model: str, *flags: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cormorant", "--log-level", "warning", "serve", "--model", model,
         "--port", str(port), "--max-model-len", "512", "--num-kv-blocks", "256",
         "--usage-db", ":memory:", *flags], cwd=ROOT, env=ENV)
    return proc, f"http://127.0.0.1:{port}"


def _greedy(url: str) -> tuple[str, str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    text = client.completions.create(model=model, prompt="The quick brown", max_tokens=16,
                                     temperature=0).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="The quick brown", max_tokens=16, temperature=0, stream=True))
    return text, streamed


def test_engine_process_serves_the_same_answers(tiny_llama):
    results = {}
    for flags in ((), ("--engine-process",)):
        proc, url = _serve(tiny_llama, *flags)
        try:
            wait_http_ready(url, proc, timeout=120, probe_timeout=1)
            children = psutil.Process(proc.pid).children(recursive=True)
            assert bool(children) == bool(flags)  # the engine process exists only with it
            results[flags] = _greedy(url)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                           for child in children)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text, streamed = results[("--engine-process",)]
    assert text == streamed == results[()][0]
