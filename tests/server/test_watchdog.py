"""Honest health: a real server process whose engine loop thread is genuinely stopped (and
nothing else in the process is) turns /health to 503 while work is pending, recovers when the
thread runs again, and, when the stall outlives the grace period, fails its in-flight request
with a 503, logs the engine thread's stack and exits with status 70.

How the loop is stalled: ptrace. PTRACE_SEIZE + PTRACE_INTERRUPT stop one thread of another
process (a signal such as SIGSTOP would stop all of them), exactly as a thread stuck in a
driver call looks from inside. The watchdog names our threads in /proc, which is how the test
finds the engine loop's thread. The thread is stopped while it idles in its command queue's
wait, where it holds no GIL; the test checks that the server still answers, and retries the
stop otherwise.

stall_reason's rule on its own: no progress since work arrived (or since the last progress)
for stall_s is a stall, whatever came before; progress without a finished step is not, until
the hard ceiling max_step_s.
"""
from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from cormorant.engine.messages import EngineStats
from cormorant.server.watchdog import EXIT_CODE, Watchdog, stall_reason
from support import wait_for

ROOT = Path(__file__).resolve().parents[2]
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
WALL = 0x40000000  # __WALL: wait for a thread of another process too
STALL_S, EXIT_GRACE_S = 1.0, 6.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ptrace is Linux")


class ThreadStopper:
    """Stops and resumes one thread of a child process (we are its tracer while it is)."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.restype = ctypes.c_long
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                     ctypes.c_void_p]
        self.is_stopped = False

    def _ptrace(self, request: int) -> None:
        if self.libc.ptrace(request, self.tid, None, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"ptrace({request:#x}, {self.tid}): {os.strerror(err)}")

    def stop(self) -> None:
        self._ptrace(PTRACE_SEIZE)
        self._ptrace(PTRACE_INTERRUPT)
        os.waitpid(self.tid, WALL)  # returns once the thread is really stopped
        self.is_stopped = True

    def resume(self) -> None:
        self._ptrace(PTRACE_DETACH)
        self.is_stopped = False

    def reap(self) -> None:
        """After the process died: collect the traced thread's exit, or the parent never
        sees the process end."""
        try:
            while True:
                os.waitpid(self.tid, WALL)
        except ChildProcessError:
            pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _engine_tid(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                if (task / "comm").read_text().strip() == "cormorant-engin":
                    return int(task.name)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("no thread named cormorant-engin: the watchdog did not name it")


def _health(url: str) -> httpx.Response:
    return httpx.get(url + "/health", timeout=2)


def _stop_idle_engine(stopper: ThreadStopper, url: str) -> None:
    """Stop the engine thread where it holds no GIL (its idle wait), checked by asking the
    server something: a thread stopped holding the GIL would freeze the whole process."""
    for _ in range(10):
        stopper.stop()
        try:
            if _health(url).status_code == 200:  # answered: the GIL is free; nothing pending
                return
        except httpx.TimeoutException:
            pass
        stopper.resume()
        time.sleep(0.13)
    raise AssertionError("could not stop the engine thread outside the GIL")


def _request(url: str, model: str, out: dict) -> None:
    try:
        out["response"] = httpx.post(url + "/v1/completions", timeout=60, json={
            "model": model, "prompt": "Are you there?", "max_tokens": 3})
    except httpx.HTTPError as exc:
        out["response"] = exc


@pytest.fixture
def server(tiny_llama, tmp_path):
    port = _free_port()
    stderr = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cormorant.server.launch", "--model", tiny_llama,
         "--port", str(port), "--max-model-len", "512", "--num-kv-blocks", "256",
         "--watchdog-stall-seconds", str(STALL_S), "--watchdog-exit-grace", str(EXIT_GRACE_S),
         "--usage-db", ":memory:", "--log-level", "warning"],
        cwd=ROOT, stderr=stderr, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, "server exited during start-up"
        try:
            return httpx.get(url + "/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 120, "the server to be ready")
    stopper = ThreadStopper(_engine_tid(proc.pid))
    try:
        yield proc, url, stopper, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        stopper.reap()
        proc.wait(timeout=30)
        stderr.close()


def test_stalled_engine_loop_turns_health_503_then_exits(server):
    proc, url, stopper, stderr = server
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    try:
        _stop_idle_engine(stopper, url)
    except OSError as exc:  # e.g. a sandbox that forbids ptrace
        pytest.skip(f"cannot ptrace the server's engine thread: {exc}")

    # An idle engine that does not step is not a stall: nothing is waiting on it.
    time.sleep(STALL_S + 0.5)
    assert _health(url).status_code == 200

    # Work arrives and the loop does not take it: 503, with the reason.
    first: dict = {}
    threading.Thread(target=_request, args=(url, model, first), daemon=True).start()
    stalled = wait_for(lambda: (r := _health(url)).status_code == 503 and r, 10, "a 503")
    assert "stuck" in stalled.json()["status"]
    assert stalled.json()["engine"]["is_loop_alive"] is True

    # The thread runs again within the grace period: the request completes, health recovers.
    stopper.resume()
    wait_for(lambda: "response" in first, 30, "the first request")
    assert first["response"].status_code == 200, first["response"]
    assert _health(url).status_code == 200
    assert proc.poll() is None

    # Stalled again, this time for good: the process fails the waiting request and exits 70.
    _stop_idle_engine(stopper, url)
    second: dict = {}
    threading.Thread(target=_request, args=(url, model, second), daemon=True).start()
    wait_for(lambda: _health(url).status_code == 503, 10, "the second 503")
    stalled_at = time.monotonic()
    wait_for(lambda: "response" in second, STALL_S + EXIT_GRACE_S + 20, "the second request")
    stopper.reap()  # the traced thread died with its process
    assert proc.wait(timeout=30) == EXIT_CODE
    assert time.monotonic() - stalled_at >= EXIT_GRACE_S - 1.0  # it waited out the grace
    response = second["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 503, response
    assert response.json()["error"]["code"] == "engine_unavailable"

    stderr.seek(0)
    log = stderr.read()
    assert "watchdog: engine loop is stuck" in log
    assert f"exiting with status {EXIT_CODE}" in log
    assert "core_client.py" in log  # the stuck engine thread's stack, for the post-mortem
    request_lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line["status"] == 503 and line["error_code"] == "engine_unavailable"
               for line in request_lines)  # the request log was flushed before exiting


def test_stall_reason_is_no_progress_since_work_arrived_or_a_step_past_the_ceiling():
    now = 1000.0
    idle = EngineStats(last_step_time=now - 500, last_progress_time=now - 500)
    assert stall_reason(idle, 2.0, now) is None  # nothing pending: not a stall
    # Work arrived 1 s ago after a long idle spell: not yet; 3 s ago with nothing since: stuck.
    fresh = EngineStats(last_step_time=now - 500, has_pending_work=True, pending_since=now - 1,
                        last_progress_time=now - 1)
    assert stall_reason(fresh, 2.0, now) is None
    stuck = EngineStats(last_step_time=now - 500, has_pending_work=True, pending_since=now - 3,
                        last_progress_time=now - 3)
    assert "no progress for 3s" in stall_reason(stuck, 2.0, now)
    # A step computing (progress now) for 100 s: fine under the ceiling, stuck past it.
    computing = EngineStats(last_step_time=now - 100, has_pending_work=True,
                            pending_since=now - 100, last_progress_time=now)
    assert stall_reason(computing, 2.0, now, max_step_s=600) is None
    assert "over the 60s ceiling" in stall_reason(computing, 2.0, now, max_step_s=60)
    assert stall_reason(computing, 2.0, now, max_step_s=0) is None  # 0: no ceiling
    dead = EngineStats(is_loop_alive=False)
    assert stall_reason(dead, 2.0, now) == "engine loop is not running"


def test_watchdog_exits_after_the_grace_and_not_before():
    stats = EngineStats(has_pending_work=True, pending_since=0.0, last_progress_time=0.0,
                        last_step_time=0.0)
    exits: list[int] = []
    watchdog = Watchdog(lambda: stats, 2.0, 5.0, exit_fn=exits.append)
    assert watchdog.check(now=1.0) is None
    assert "stuck" in watchdog.check(now=3.0) and not exits  # stalled, within the grace
    watchdog.check(now=7.0)
    assert not exits
    watchdog.check(now=8.5)
    assert exits == [EXIT_CODE]
