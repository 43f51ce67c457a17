"""B4, online serving through the HTTP server: a Poisson sweep over request rates.

Starts `cormorant.bench.serve_random` (the real server on random weights) in a subprocess,
drives each rate with bench.serving's client, stops the server, then times a decode step on
an in-process engine at the batch size the best rate ran at (its mean number of requests in
flight), so that ITL p50 can be held against the step time and the step's floor.
The best rate is the highest whose p99 TTFT is under 1 s with every request completed.
Imports bench modules; asyncio.
"""
from __future__ import annotations

import asyncio
import math

from cormorant.bench.context import RunContext, release
from cormorant.bench.floors import StepCost
from cormorant.bench.offline import decode_step_times, engine_for
from cormorant.bench.profiling import maybe_profile
from cormorant.bench.report import fmt, fraction
from cormorant.bench.serving import best_rate, drive, drive_sharded, start_server, summarize
from cormorant.bench.workloads import b4_workload, random_prompts

B4_ENGINE = dict(max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=2048)
TTFT_P99_LIMIT_MS = 1000.0
ITL_OVER_STEP_LIMIT = 1.3
DRAIN_ALLOWANCE_S = 30.0  # per rate, on top of the arrivals: the last requests' decode


def server_engine_args(async_scheduling: bool | None, engine_process: bool | None = None,
                       tensor_parallel_size: int = 1) -> list[str]:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in B4_ENGINE.items()]
    args.append(f"--tensor-parallel-size={tensor_parallel_size}")
    if engine_process is not None:
        args.append("--engine-process" if engine_process else "--no-engine-process")
    if async_scheduling is not None:
        args.append("--async-scheduling" if async_scheduling else "--no-async-scheduling")
    return args


def client_shards(rate: float) -> int:
    """Load-generator processes for a rate: one Python client keeps up with ~16 req/s of
    streams of 256 tokens (its event-loop lag stayed under 2 ms at 8 req/s on the H100 host
    and reached 70-85 ms at p99 at 64 req/s), so the requests are split beyond that."""
    return max(1, min(8, math.ceil(rate / 16)))


def _sweep(ctx: RunContext, server, workload, notes: list[str]) -> list[dict]:
    summaries = []
    for rate in workload.rates:
        needed = workload.num_requests(rate) / rate + DRAIN_ALLOWANCE_S
        if ctx.seconds_left() < needed:
            notes.append(f"rates from {rate:g}/s on skipped: {ctx.seconds_left():.0f} s of the "
                         f"time budget left, {needed:.0f} s needed")
            break
        run = workload.run(rate)
        shards = client_shards(rate)
        if shards == 1:
            results, wall, lags = asyncio.run(drive(server.base_url, server.model_name, run,
                                                    workload.temperature))
        else:
            results, wall, lags = drive_sharded(server.base_url, server.model_name, run,
                                                workload.temperature, shards, ctx.out_dir)
        summary = {**summarize(run, results, wall, lags), "client_shards": shards}
        summaries.append(summary)
        lag_p99 = summary["client_loop_lag_ms"]["p99"]
        if lag_p99 is not None and lag_p99 > 20:
            notes.append(f"rate {rate:g}/s: the client's event loop lagged {lag_p99:.0f} ms "
                         "at p99; latencies there are partly the client's")
    return summaries


def _step_at_batch(ctx: RunContext, name: str, batch: int, context: int) -> dict:
    llm = engine_for(ctx, name, **B4_ENGINE)
    try:
        prompts = random_prompts(batch, context, seed=49)
        decode_step_times(llm, [p[:16] for p in prompts[:2]], 4)  # warm-up
        times = decode_step_times(llm, prompts, 32)
        cost = StepCost.of(llm.model_config, ctx.dtype_bytes, ctx.body_bytes)
        profiled = maybe_profile(ctx, llm, "b4", batch, context)
    finally:
        del llm
        release()
    step_s = sorted(times)[len(times) // 2]
    floor_s, step_bytes, _ = cost.decode_step(ctx.ceilings, batch, context)
    return {"batch": batch, "context": context, "step_ms_p50": step_s * 1e3,
            "floor_ms": floor_s * 1e3, "fraction_of_floor": fraction(floor_s, step_s),
            "bytes_per_step": step_bytes, "profile": profiled}


def _rows(summaries: list[dict], best: dict | None, step: dict | None) -> list[list[str]]:
    rows = []
    for s in summaries:
        text = (f"{fmt(s['request_throughput'], 1)} req/s, {fmt(s['output_tokens_per_s'])} tok/s, "
                f"TTFT p99 {fmt(s['ttft_ms']['p99'])} ms, ITL p50 {fmt(s['itl_ms']['p50'], 1)} ms")
        rows.append([f"{s['rate']:g} req/s", text, "", "", "-", "TTFT p99 < 1 s"])
    if best and step:
        ratio = best["itl_ms"]["p50"] / step["step_ms_p50"] if best["itl_ms"]["p50"] else None
        rows.append([f"best {best['rate']:g} req/s", f"ITL p50 / step = {fmt(ratio, 2)} "
                     f"(step {fmt(step['step_ms_p50'], 1)} ms at batch {step['batch']})",
                     f"{fmt(step['floor_ms'], 1)} ms", fmt(step["fraction_of_floor"], 2), "-",
                     f"ITL p50 <= {ITL_OVER_STEP_LIMIT}x step"])
    return rows


def run_b4(ctx: RunContext) -> dict:
    workload = b4_workload(ctx.scale)
    name = ctx.model(workload.model)
    notes: list[str] = []
    server = start_server(name, str(ctx.device), ctx.dtype_name, ctx.out_dir / "b4_server.log",
                          server_engine_args(ctx.async_scheduling, ctx.engine_process,
                                             ctx.tensor_parallel_size)
                          + ([f"--profile-out={ctx.out_dir / 'b4_server_profile.txt'}"]
                             if ctx.profile else []),
                          ready_timeout_s=min(300.0, ctx.seconds_left()))
    try:
        summaries = _sweep(ctx, server, workload, notes)
    finally:
        server.stop()
    release()
    best = best_rate(summaries, TTFT_P99_LIMIT_MS)
    step = None
    if best is None:
        notes.append("no rate kept p99 TTFT under 1 s with every request completed")
    else:
        batch = min(B4_ENGINE["max_num_seqs"], max(1, round(best["mean_concurrency"])))
        step = _step_at_batch(ctx, name, batch, workload.prompt_len + workload.output_len // 2)
        if best["itl_ms"]["p50"] is not None:
            step["itl_p50_over_step"] = best["itl_ms"]["p50"] / step["step_ms_p50"]
    return {"bench": "b4", "model": name, "engine": B4_ENGINE,
            "workload": {"prompt_len": workload.prompt_len, "output_len": workload.output_len,
                         "rates": list(workload.rates), "seconds_per_rate":
                         workload.seconds_per_rate, "temperature": workload.temperature,
                         "requests_per_rate": {str(r): workload.num_requests(r)
                                               for r in workload.rates}},
            "rates": summaries, "best_rate": best["rate"] if best else None,
            "decode_step_at_best": step, "rows": _rows(summaries, best, step), "notes": notes}
