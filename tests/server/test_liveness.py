"""Liveness tells a stuck step from a computing one (issue #21, items 2 and 7), with a real
engine in a thread behind the real server: a model forward that blocks (no CPU) right after an
idle spell turns /health 503 and the watchdog fires within its stall threshold; a forward that
computes far longer than that threshold is not a stall (health 200, no exit); and a request
whose x-request-timeout passes while it runs ends alone with a 504 (streamed: an error event
after the tokens so far) while another completes.

The forward is slowed or held by wrapping the runner's real model (the engine, scheduler and
runner are the real ones). The watchdog under test gets an exit function that records instead
of ending the test process.
"""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import torch

from cormorant.server.watchdog import Watchdog
from support import wait_for
from server_helpers import ServerThread, start_engine, tiny_engine_config

STALL_S = 1.5


class GatedModel:
    """The runner's model, with a fault on demand: `block()` holds the next forward until
    `release()` (a hang: no CPU used); `burn(s, after)` makes the forward `after` calls later
    compute for s seconds; `delay(s)` sleeps s before every forward."""

    def __init__(self, model) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._mode: tuple | None = None
        self.entered = threading.Event()
        self._released = threading.Event()
        self.sleep_s = 0.0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def block(self) -> None:
        self.entered.clear()
        self._released.clear()
        self._mode = ("block", 0)

    def release(self) -> None:
        self._released.set()

    def burn(self, seconds: float, after: int = 0) -> None:
        self.entered.clear()
        self._mode = ("burn", after, seconds)

    def __call__(self, *args, **kwargs):
        with self._lock:
            mode = self._mode
            if mode is not None and mode[1] > 0:
                self._mode = (mode[0], mode[1] - 1, *mode[2:])
                mode = None
            elif mode is not None:
                self._mode = None
        if mode is not None and mode[0] == "block":
            self.entered.set()
            self._released.wait()
        elif mode is not None and mode[0] == "burn":
            self.entered.set()
            _compute_for(mode[2])
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self._model(*args, **kwargs)


def _compute_for(seconds: float) -> None:
    """Real CPU work for `seconds` (wall clock) on the calling thread."""
    a = torch.randn(64, 64)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a)


@pytest.fixture
def gated(tiny_llama):
    llm = start_engine(tiny_engine_config(tiny_llama))
    runner = llm.client.core.runner
    gate = GatedModel(runner.model)
    runner.model = gate
    server = ServerThread(llm, health_stall_s=STALL_S).start()
    exits: list[int] = []
    watchdog = Watchdog(llm.stats, STALL_S, 0.0, interval_s=0.1, exit_fn=exits.append).start()
    try:
        yield server, gate, watchdog, exits
    finally:
        gate.release()
        watchdog.stop()
        server.stop()
        llm.shutdown()


def _complete(server: ServerThread, out: dict, max_tokens: int = 3, **headers) -> None:
    client = server.client()
    try:
        out["response"] = client.completions.create(
            model=server.model, prompt="Are you there?", max_tokens=max_tokens,
            extra_body={"ignore_eos": True}, extra_headers=headers or None, timeout=120)
    except openai.APIError as exc:
        out["response"] = exc


def _in_thread(fn, *args, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def test_a_step_that_hangs_after_an_idle_spell_is_a_stall(gated):
    server, gate, watchdog, exits = gated
    time.sleep(STALL_S + 1.0)  # idle, longer than the threshold: not a stall
    assert httpx.get(server.url + "/health").status_code == 200
    assert watchdog.reason is None and not exits

    gate.block()
    out: dict = {}
    request = _in_thread(_complete, server, out)
    assert gate.entered.wait(30), "the request's forward never ran"
    stalled = wait_for(lambda: (r := httpx.get(server.url + "/health")).status_code == 503
                        and r, 30, "/health to turn 503")
    assert "no progress" in stalled.json()["status"]
    assert stalled.json()["engine"]["has_pending_work"] is True
    wait_for(lambda: exits, 30, "the watchdog to fire")
    assert "stuck" in watchdog.reason

    gate.release()  # the step goes on: the request completes and health recovers
    request.join(60)
    assert not isinstance(out["response"], Exception), out["response"]
    assert out["response"].usage.completion_tokens == 3
    wait_for(lambda: httpx.get(server.url + "/health").status_code == 200, 30, "a 200")


def test_a_step_that_computes_longer_than_the_threshold_is_not_a_stall(gated):
    server, gate, watchdog, exits = gated
    # The request's second forward (a decode, after the prefill's snapshot said "work
    # pending") computes for 3x the threshold.
    gate.burn(3 * STALL_S, after=1)
    out: dict = {}
    request = _in_thread(_complete, server, out, max_tokens=4)
    statuses = []
    while request.is_alive():
        statuses.append(httpx.get(server.url + "/health", timeout=30).status_code)
        time.sleep(0.2)
    request.join()
    assert gate.entered.is_set(), "the long step never ran"
    assert not isinstance(out["response"], Exception), out["response"]
    assert out["response"].usage.completion_tokens == 4
    assert set(statuses) == {200}, statuses
    assert not exits and watchdog.reason is None


def _stream(server: ServerThread, out: dict, **headers) -> None:
    chunks = []
    try:
        for chunk in server.client().completions.create(
                model=server.model, prompt="Stream on", max_tokens=400, stream=True,
                extra_body={"ignore_eos": True}, extra_headers=headers, timeout=120):
            chunks.append(chunk)
        out["response"] = chunks
    except openai.APIError as exc:
        out["response"], out["chunks"] = exc, chunks


def test_a_running_request_past_its_deadline_ends_alone(gated):
    server, gate, watchdog, exits = gated
    gate.sleep_s = 0.02  # every step takes a while: 400 tokens can't finish in 1 s
    late: dict = {}
    late_stream: dict = {}
    on_time: dict = {}
    threads = [_in_thread(_complete, server, late, max_tokens=400, **{"x-request-timeout": "1"}),
               _in_thread(_stream, server, late_stream, **{"x-request-timeout": "1"}),
               _in_thread(_complete, server, on_time, max_tokens=20)]
    for thread in threads:
        thread.join(120)
    error = late["response"]
    assert isinstance(error, openai.APIStatusError), error
    assert error.status_code == 504
    assert error.body["code"] == "deadline_exceeded" and "stopped" in error.body["message"]
    # Streaming: the tokens so far went out, then the error event ends the stream.
    assert isinstance(late_stream["response"], openai.APIError), late_stream["response"]
    assert late_stream["response"].body["code"] == "deadline_exceeded"
    assert 0 < len(late_stream["chunks"]) < 400
    assert on_time["response"].usage.completion_tokens == 20  # the other request completed
    gate.sleep_s = 0.0
    # The stopped request's blocks are freed; the server is up and serves.
    engine = wait_for(lambda: (e := httpx.get(server.url + "/health").json()["engine"])
                       ["num_free_blocks"] == e["num_total_blocks"] and e, 30, "free blocks")
    assert engine["num_running"] == 0
    canary: dict = {}
    _complete(server, canary)
    assert canary["response"].usage.completion_tokens == 3
    assert not exits
