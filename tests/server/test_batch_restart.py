"""A batch survives SIGKILL: the real server process (`python -m cormorant.server.launch`) is
killed twice while a job runs, restarted on the same database and files directory each time,
and still finishes with exactly one result per line, each matching the same request sent one
by one (temperature 0). N = 48 lines (CORMORANT_BATCH_RESTART_LINES changes it) keeps the
test near 30 s on 2 idle CPU cores, most of it the three start-ups; the issue's 500 lines
were run once by hand with that variable (see docs/operations.md, "Batch jobs")."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import openai
import pytest

from support import wait_http_ready

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_LINES = int(os.environ.get("CORMORANT_BATCH_RESTART_LINES", "48"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(model: str, workdir) -> tuple[subprocess.Popen, openai.OpenAI]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cormorant.server.launch", "--model", model, "--port", str(port),
         "--max-model-len", "1024", "--num-kv-blocks", "512", "--log-level", "warning",
         "--usage-db", str(workdir / "usage.db"), "--files-dir", str(workdir / "files"),
         "--batch-concurrency", "4", "--batch-lease-s", "2",
         "--no-response-cache", "--no-engine-process"], cwd=ROOT, env=env,
        stderr=open(workdir / "server.log", "a"))  # one JSON line per request: not a pipe
    url = f"http://127.0.0.1:{port}"
    wait_http_ready(url, proc, timeout=120, probe_timeout=1)
    return proc, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                               timeout=60)


def _line(i: int, model: str) -> dict:
    return {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/completions",
            "body": {"model": model, "prompt": f"Item {i}:", "max_tokens": 12 + i % 7,
                     "temperature": 0, "ignore_eos": True}}


def _kill_when(proc: subprocess.Popen, client: openai.OpenAI, batch_id: str,
               at_least: int) -> int:
    """SIGKILL the server once `at_least` lines are answered (before the job ends)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = client.batches.retrieve(batch_id).request_counts
        if counts.completed >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return counts.completed
        time.sleep(0.02)
    raise AssertionError("the batch made no progress")


@pytest.fixture
def kill_on_exit():
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_batch_killed_twice_finishes_with_every_line_answered_once(tiny_llama, tmp_path,
                                                                     kill_on_exit):
    t0 = time.monotonic()
    proc, client = _spawn(tiny_llama, tmp_path)
    print(f"first server up in {time.monotonic() - t0:.1f}s")
    kill_on_exit.append(proc)
    model = client.models.list().data[0].id
    lines = [_line(i, model) for i in range(NUM_LINES)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/completions",
                                  completion_window="24h")
    seen = [_kill_when(proc, client, batch.id, NUM_LINES // 4)]
    proc, client = _spawn(tiny_llama, tmp_path)  # resumes the batch on its own
    kill_on_exit.append(proc)
    seen.append(_kill_when(proc, client, batch.id, NUM_LINES // 2))
    assert seen[0] < seen[1] < NUM_LINES, seen  # killed mid-job, with progress in between
    proc, client = _spawn(tiny_llama, tmp_path)
    kill_on_exit.append(proc)
    deadline = time.monotonic() + 120
    while (batch := client.batches.retrieve(batch.id)).status != "completed":
        assert batch.status in ("in_progress", "finalizing") and time.monotonic() < deadline
        time.sleep(0.1)
    assert (batch.request_counts.total, batch.request_counts.completed,
            batch.request_counts.failed) == (NUM_LINES, NUM_LINES, 0)
    assert batch.error_file_id is None
    print(f"batch done at {time.monotonic() - t0:.1f}s; killed at {seen} answered lines")
    text = client.files.content(batch.output_file_id).text
    results = [json.loads(x) for x in text.splitlines()]
    assert [r["custom_id"] for r in results] == [line["custom_id"] for line in lines]
    for line, result in zip(lines, results):
        body = result["response"]["body"]
        assert result["response"]["status_code"] == 200
        assert body["usage"]["completion_tokens"] == line["body"]["max_tokens"]
        params = {k: v for k, v in line["body"].items() if k != "ignore_eos"}
        one = client.completions.create(**params, extra_body={"ignore_eos": True})
        assert body["choices"][0]["text"] == one.choices[0].text, line["custom_id"]
    print(f"checked at {time.monotonic() - t0:.1f}s")
