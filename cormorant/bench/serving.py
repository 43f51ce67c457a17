"""B4's moving parts: the server subprocess, the Poisson load generator and the latency stats.

The server (bench.serve_random) runs in its own process group, so the client's Python never
competes with the engine loop for the GIL and the whole group can be stopped. The client sends
each request at its Poisson arrival time as a streamed /v1/completions call with token-id
prompts and ignore_eos, and timestamps every SSE event on arrival:
  TTFT = first event with text - send;  ITL = gaps between text events (per event, as vLLM's
  benchmark_serving counts them: tokens of several engine steps read together show as 0 gaps);
  TPOT = (end - first token) / (output tokens - 1);  output tokens from the usage chunk.
A probe task measures the client's own event-loop lag: a large p99 lag means the client, not
the server, set the pace, and the report says so. At high rates the requests are split over
several client processes (drive_sharded, bench.load_client). Imports workloads; httpx, numpy.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cormorant.bench.context import child_env
from cormorant.bench.workloads import ServingRun


# -- the server --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    base_url: str
    log_path: Path
    model_name: str = ""

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (the server drains), then SIGKILL the group if it is still there."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, num_chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""


def start_server(model: str, device: str, dtype: str, log_path: Path, engine_args: list[str],
                 ready_timeout_s: float = 300.0) -> ServerProcess:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "cormorant.bench.serve_random", "--model-config", model,
           "--port", str(port), "--device", device, "--dtype", dtype, *engine_args]
    log = open(log_path, "w")  # noqa: SIM115 - the child owns it for its lifetime
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=child_env())
    log.close()
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{server.log_tail()}")
        if "Traceback" in server.log_tail():  # e.g. the warm-up failed: /ready stays 503
            server.stop()
            raise RuntimeError(f"the server failed while starting:\n{server.log_tail()}")
        try:
            if httpx.get(server.base_url + "/ready", timeout=2).status_code == 200:
                models = httpx.get(server.base_url + "/v1/models", timeout=5).json()
                server.model_name = models["data"][0]["id"]
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the server was not ready in {ready_timeout_s:.0f} s:\n"
                       f"{server.log_tail()}")


# -- the client --------------------------------------------------------------------------------
@dataclass
class RequestResult:
    send: float
    scheduled: float = 0.0  # the arrival time the run asked for (t0 + its offset)
    end: float = 0.0
    first_token: float | None = None
    event_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    words: int = 0  # tokens counted from the text (the synthetic tokenizer: a word per token)
    error: str | None = None


async def _one_request(client, url: str, body: dict, result: RequestResult) -> None:
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return
            buffer = b""
            async for chunk in resp.aiter_bytes():
                now = time.monotonic()
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    _take_event(event, now, result)
    except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
        result.error = f"{type(e).__name__}: {e}"
    finally:
        result.end = time.monotonic()


def _take_event(event: bytes, now: float, result: RequestResult) -> None:
    data = event.strip()
    if not data.startswith(b"data:"):
        return
    data = data[5:].strip()
    if data == b"[DONE]":
        return
    payload = json.loads(data)
    if payload.get("usage"):
        result.output_tokens = payload["usage"]["completion_tokens"]
    for choice in payload.get("choices") or ():
        text = choice.get("text") or ""
        if text:
            if result.first_token is None:
                result.first_token = now
            result.event_times.append(now)
            result.words += len(text.split())


async def _lag_probe(samples: list[float], stop: asyncio.Event, period: float = 0.01) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        await asyncio.sleep(period)
        samples.append(time.monotonic() - t0 - period)


async def drive(base_url: str, model_name: str, run: ServingRun, temperature: float,
                indices: list[int] | None = None, t0: float | None = None
                ) -> tuple[list[RequestResult], float, list[float]]:
    """Send run's requests (those in `indices`, default all) at their arrival times after t0
    (time.monotonic(), default now); (results, wall seconds, loop lags)."""
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    url = base_url + "/v1/completions"
    lags: list[float] = []
    stop = asyncio.Event()
    chosen = range(len(run.prompts)) if indices is None else indices
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None)) as client:
        probe = asyncio.create_task(_lag_probe(lags, stop))
        t0 = time.monotonic() if t0 is None else t0
        tasks, results = [], []
        for i in chosen:
            delay = t0 + run.arrival_offsets[i] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {"model": model_name, "prompt": run.prompts[i], "max_tokens": run.max_tokens,
                    "temperature": temperature, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            result = RequestResult(send=time.monotonic(), scheduled=t0 + run.arrival_offsets[i])
            results.append(result)
            tasks.append(asyncio.create_task(_one_request(client, url, body, result)))
        await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
        stop.set()
        await probe
    return results, wall, lags


def drive_sharded(base_url: str, model_name: str, run: ServingRun, temperature: float,
                  shards: int, work_dir: Path) -> tuple[list[RequestResult], float, list[float]]:
    """drive() split over `shards` client processes (bench.load_client; request i goes to
    shard i % shards), so that the load generator's Python does not set the pace. Times are
    time.monotonic(), one clock for every process on the host."""
    run_file = work_dir / "b4_run.json"
    run_file.write_text(json.dumps({"rate": run.rate, "prompts": run.prompts,
                                    "arrival_offsets": run.arrival_offsets,
                                    "max_tokens": run.max_tokens}))
    t0 = time.monotonic() + 2.0  # time for the workers to start
    procs = []
    for k in range(shards):
        out = work_dir / f"b4_shard{k}.json"
        procs.append((out, subprocess.Popen(
            [sys.executable, "-m", "cormorant.bench.load_client", str(run_file), str(out),
             base_url, model_name, str(temperature), str(k), str(shards), repr(t0)],
            env=child_env())))
    results, lags = [], []
    for out, proc in procs:
        if proc.wait() != 0:
            raise RuntimeError(f"load client shard exited with {proc.returncode}")
        data = json.loads(out.read_text())
        results += [RequestResult(**r) for r in data["results"]]
        lags += data["lags"]
    wall = max((r.end for r in results), default=t0) - t0
    return results, wall, lags


# -- the numbers -------------------------------------------------------------------------------
def _stats_ms(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "p50": None, "p99": None}
    arr = np.asarray(values) * 1e3
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)),
            "p99": float(np.percentile(arr, 99))}


def summarize(run: ServingRun, results: list[RequestResult], wall: float,
              lags: list[float]) -> dict:
    ok = [r for r in results if r.error is None and r.first_token is not None]
    tokens = [r.output_tokens or r.words for r in ok]
    ttft = [r.first_token - r.send for r in ok]
    tpot = [(r.end - r.first_token) / (n - 1) for r, n in zip(ok, tokens) if n > 1]
    itl = [b - a for r in ok for a, b in zip(r.event_times, r.event_times[1:])]
    start = min((r.send for r in results), default=0.0)
    end = max((r.end for r in results), default=0.0)
    busy = sum(r.end - r.send for r in ok)
    events = sum(len(r.event_times) for r in ok)
    return {
        "rate": run.rate, "num_requests": len(results), "completed": len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "wall_s": wall, "request_throughput": len(ok) / wall if wall else None,
        "output_tokens": sum(tokens), "output_tokens_per_s": sum(tokens) / wall if wall else None,
        "tokens_per_event": sum(tokens) / events if events else None,
        "mean_concurrency": busy / (end - start) if end > start else 0.0,
        "ttft_ms": _stats_ms(ttft), "tpot_ms": _stats_ms(tpot), "itl_ms": _stats_ms(itl),
        "client_loop_lag_ms": _stats_ms(lags),
    }


def best_rate(summaries: list[dict], ttft_p99_limit_ms: float = 1000.0) -> dict | None:
    """The highest rate whose requests all completed with p99 TTFT under the limit."""
    good = [s for s in summaries if s["completed"] == s["num_requests"]
            and s["ttft_ms"]["p99"] is not None and s["ttft_ms"]["p99"] < ttft_p99_limit_ms]
    return max(good, key=lambda s: s["rate"], default=None)
