"""B4 with a concurrent batch job (`bench b4b`): interactive TTFT alone and beside a batch.

One random-weight server (bench.serving.start_server, as B4), B4's workload at one request rate
(B4's best measured rate at the scale, or --b4b-rate), measured twice by B4's own client: first
alone (after a short warm-up), then while a batch job runs (same arrival times, other prompts,
so the prefix cache helps neither): a JSONL file of /v1/completions lines (4x the interactive
requests, 256 new tokens each, B4's prompt length; tiny: more, shorter lines) uploaded with
POST /v1/files and started with POST /v1/batches over HTTP. The second window opens once the
batch has answered its first line (it is then running in the engine) and its completed count is
read before and after, so the result shows it ran throughout. Reported: TTFT p50/p99 and output
tok/s of both windows, the ratio of the p99s (issue #17's target: <= 1.2) and the batch lines
completed in the window. The batch is cancelled before the server stops.
Imports bench modules; httpx.
"""
from __future__ import annotations

import asyncio
import json
import time

from cormorant.bench.context import RunContext, release
from cormorant.bench.online import B4_ENGINE, server_engine_args, client_shards
from cormorant.bench.report import fmt
from cormorant.bench.serving import ServerProcess, drive, drive_sharded, start_server, summarize
from cormorant.bench.workloads import ServingRun, ServingWorkload, b4_workload, random_prompts

# B4's best rate on the H100 (RESULTS.md: 32 req/s with p99 TTFT under 1 s, full and quick);
# tiny: the tiny workload's highest rate.
DEFAULT_RATES = {"full": 32.0, "quick": 32.0, "tiny": 8.0}
TTFT_P99_RATIO_TARGET = 1.2
# Batch lines per interactive request (enough to outlast the window), their new tokens and
# how many are in flight at once. Tiny: short lines, so that several finish inside its
# one-second window (its 6 requests of 8 tokens), and many of them, so the batch outlasts it.
BATCH_LINES_PER_REQUEST = {"full": 4, "quick": 4, "tiny": 32}
BATCH_MAX_TOKENS = {"full": 256, "quick": 256, "tiny": 8}
BATCH_CONCURRENCY = {"full": 64, "quick": 64, "tiny": 4}
BATCH_START_TIMEOUT_S = 300.0


def _ok(resp) -> dict:
    """The JSON of a 200, or an error that carries the server's message (e.g. a device image
    without python-multipart answers the upload with a 400 that says so)."""
    if resp.status_code != 200:
        raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: HTTP "
                           f"{resp.status_code}: {resp.text[:300]}")
    return resp.json()


class BatchJob:
    """One batch over the server's Files and Batch APIs (no key: B4's server has no auth)."""

    def __init__(self, server: ServerProcess) -> None:
        import httpx

        self.http = httpx.Client(base_url=server.base_url, timeout=60.0)
        self.id = ""

    def start(self, lines: list[dict]) -> None:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file = _ok(self.http.post("/v1/files", data={"purpose": "batch"},
                                  files={"file": ("b4b.jsonl", data, "application/jsonl")}))
        self.id = _ok(self.http.post("/v1/batches", json={
            "input_file_id": file["id"], "endpoint": "/v1/completions",
            "completion_window": "24h"}))["id"]

    def doc(self) -> dict:
        return _ok(self.http.get(f"/v1/batches/{self.id}"))

    def wait_first_line(self, timeout_s: float) -> dict:
        """Until one line is answered: the batch is then running in the engine."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            doc = self.doc()
            if doc["request_counts"]["completed"] + doc["request_counts"]["failed"] > 0:
                return doc
            if doc["status"] not in ("validating", "in_progress"):
                raise RuntimeError(f"batch {self.id} ended before answering: {doc['status']}")
            time.sleep(0.2)
        raise RuntimeError(f"batch {self.id} answered no line in {timeout_s:.0f} s")

    def close(self) -> None:
        try:
            if self.id:
                self.http.post(f"/v1/batches/{self.id}/cancel")
        finally:
            self.http.close()


def batch_lines(workload: ServingWorkload, model: str, num: int, max_tokens: int) -> list[dict]:
    prompts = random_prompts(num, workload.prompt_len, seed=47)
    return [{"custom_id": f"b4b-{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": model, "prompt": prompt, "max_tokens": max_tokens,
                      "temperature": workload.temperature, "ignore_eos": True}}
            for i, prompt in enumerate(prompts)]


def fresh_prompts(run: ServingRun, seed: int, num: int | None = None) -> ServingRun:
    """The run's arrival times (the first `num`) with other random prompts of the same length:
    a window never finds an earlier window's prompts in the prefix cache."""
    num = len(run.prompts) if num is None else num
    return ServingRun(run.rate, random_prompts(num, len(run.prompts[0]), seed),
                      run.arrival_offsets[:num], run.max_tokens)


def _measure(ctx: RunContext, server: ServerProcess, run: ServingRun,
             temperature: float) -> dict:
    shards = client_shards(run.rate)
    if shards == 1:
        results, wall, lags = asyncio.run(drive(server.base_url, server.model_name, run,
                                                temperature))
    else:
        results, wall, lags = drive_sharded(server.base_url, server.model_name, run,
                                            temperature, shards, ctx.out_dir)
    return {**summarize(run, results, wall, lags), "client_shards": shards}


def _with_batch(ctx: RunContext, server: ServerProcess, run: ServingRun,
                workload: ServingWorkload) -> tuple[dict, dict]:
    num_lines = BATCH_LINES_PER_REQUEST[ctx.scale] * len(run.prompts)
    max_tokens = BATCH_MAX_TOKENS[ctx.scale]
    job = BatchJob(server)
    try:
        job.start(batch_lines(workload, server.model_name, num_lines, max_tokens))
        before = job.wait_first_line(min(BATCH_START_TIMEOUT_S, max(30.0, ctx.seconds_left())))
        t0 = time.monotonic()
        summary = _measure(ctx, server, run, workload.temperature)
        window_s = time.monotonic() - t0
        after = job.doc()
    finally:
        job.close()
    done = after["request_counts"]["completed"] - before["request_counts"]["completed"]
    batch = {"id": job.id, "lines": num_lines, "max_tokens": max_tokens,
             "concurrency": BATCH_CONCURRENCY[ctx.scale], "window_s": window_s,
             "completed_before": before["request_counts"]["completed"],
             "completed_after": after["request_counts"]["completed"],
             "failed_after": after["request_counts"]["failed"],
             "completed_in_window": done, "status_after": after["status"],
             "outlasted_window": after["status"] == "in_progress",
             "batch_tokens_per_s_in_window": done * max_tokens / window_s if window_s else None}
    return summary, batch


def _ratio(alone: dict, beside: dict) -> float | None:
    a, b = alone["ttft_ms"]["p99"], beside["ttft_ms"]["p99"]
    return b / a if a and b is not None else None


def _row(case: str, s: dict, extra: str = "") -> list[str]:
    text = (f"TTFT p50 {fmt(s['ttft_ms']['p50'])} / p99 {fmt(s['ttft_ms']['p99'])} ms, "
            f"{fmt(s['output_tokens_per_s'])} tok/s, {s['completed']}/{s['num_requests']} done"
            + extra)
    return [case, text, "", "", "-", ""]


def run_b4_batch(ctx: RunContext) -> dict:
    workload = b4_workload(ctx.scale)
    rate = ctx.b4b_rate or DEFAULT_RATES[ctx.scale]
    name = ctx.model(workload.model)
    run = workload.run(rate)
    warm_up = fresh_prompts(run, seed=45, num=max(2, len(run.prompts) // 4))
    server = start_server(name, str(ctx.device), ctx.dtype_name, ctx.out_dir / "b4b_server.log",
                          server_engine_args(ctx.async_scheduling, ctx.engine_process,
                                             ctx.tensor_parallel_size)
                          + [f"--batch-concurrency={BATCH_CONCURRENCY[ctx.scale]}"],
                          ready_timeout_s=min(300.0, max(60.0, ctx.seconds_left())))
    try:
        _measure(ctx, server, warm_up, workload.temperature)  # not reported
        alone = _measure(ctx, server, run, workload.temperature)
        beside, batch = _with_batch(ctx, server, fresh_prompts(run, seed=46), workload)
    finally:
        server.stop()
    release()
    ratio = _ratio(alone, beside)
    notes = []
    if ctx.device.type != "cuda":
        notes.append("not on a GPU: the timings mean nothing (the run proves the harness)")
    if not batch["outlasted_window"]:
        notes.append(f"the batch was {batch['status_after']} before the window closed")
    rows = [_row(f"alone, {rate:g} req/s", alone),
            _row("with a batch", beside, f"; batch lines done in window: "
                 f"{batch['completed_in_window']} ({fmt(batch['batch_tokens_per_s_in_window'])}"
                 " tok/s)"),
            ["TTFT p99 with / alone", fmt(ratio, 2), "", "", "-",
             f"<= {TTFT_P99_RATIO_TARGET}"]]
    return {"bench": "b4b", "model": name, "engine": B4_ENGINE, "rate": rate,
            "workload": {"prompt_len": workload.prompt_len, "output_len": workload.output_len,
                         "num_requests": len(run.prompts), "temperature": workload.temperature},
            "alone": alone, "with_batch": beside, "batch": batch, "ttft_p99_ratio": ratio,
            "ttft_p99_ratio_target": TTFT_P99_RATIO_TARGET,
            "meets_target": ratio is not None and ratio <= TTFT_P99_RATIO_TARGET,
            "rows": rows, "notes": notes}
