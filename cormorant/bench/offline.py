"""B1, B2 and B3 on cormorant: build a random-weight engine, time the workload, price its floor.

The engine is the offline `LLM` built from an EngineConfig with load_format "random"
(bench.context.EngineSettings), the same builder every cormorant engine goes through.
Throughput (B1, B3) is output tokens / wall time of one `LLM.generate` call over the whole
workload, after a short warm-up, as nano-vllm's bench.py measures it. Decode latency (B2, and
B4's step time at a batch size) times engine steps one by one once every sequence has its
first token: each step ends with the sampled ids on the host, so wall time per step is real.
Imports bench modules, engine types, frontend.llm, sampling_params; torch.
"""
from __future__ import annotations

import itertools
import time

import torch

from cormorant.bench.context import RunContext, release
from cormorant.bench.floors import Limits, StepCost, simulate
from cormorant.bench.report import fmt, fraction
from cormorant.bench.workloads import OfflineWorkload, b1_workload, b2_workload, b3_workloads
from cormorant.engine.types import EngineRequest
from cormorant.frontend.llm import LLM
from cormorant.sampling_params import SamplingParams

_ids = itertools.count()
B1_TARGET_TOK_S = 20_000
B2_TARGET_MS = {"llama-3.1-8b": 5.9, "qwen3-0.6b": 0.8}
B3_TARGET_FRACTION = 0.75


def _sync(llm: LLM) -> None:
    device = llm.engine.runner.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kv_capacity_tokens(llm: LLM) -> int:
    return llm.engine.runner.num_blocks * llm.config.cache.block_size


def time_offline(llm: LLM, workload: OfflineWorkload) -> dict:
    """One generate() over the whole workload; checks every sequence got all its tokens."""
    # Warm-up over the workload's own prompt shapes (a full batch, prefill chunks at the
    # token budget, the first decode steps), offset by one token so the timed run gets no
    # prefix-cache hits from it: first-time costs (cuBLAS heuristics for new GEMM shapes,
    # allocator growth) stay out of the timed region, as they would in a warm server.
    batch = min(len(workload.prompts), llm.config.scheduler.max_num_seqs)
    warm = [[(t + 1) % 10000 for t in p] for p in workload.prompts[:batch]]
    llm.generate(warm, SamplingParams(max_tokens=4, ignore_eos=True))
    before = llm.engine.stats()
    _sync(llm)
    t0 = time.perf_counter()
    outputs = llm.generate(workload.prompts, workload.sampling_params())
    _sync(llm)
    seconds = time.perf_counter() - t0
    after = llm.engine.stats()
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert tokens == workload.num_output_tokens, (tokens, workload.num_output_tokens)
    return {"seconds": seconds, "output_tokens": tokens, "output_tokens_per_s": tokens / seconds,
            "steps": after.steps - before.steps,
            "preemptions": after.num_preemptions - before.num_preemptions}


def start_decode(llm: LLM, prompts: list[list[int]], num_steps: int) -> None:
    """Queue the prompts for num_steps decode steps after their first token; run the prefill
    until every sequence has that token, so the next steps are all pure decode."""
    core = llm.engine
    params = SamplingParams(max_tokens=num_steps + 1, temperature=0.0, ignore_eos=True)
    ids = [f"decode-{next(_ids)}" for _ in prompts]
    for req_id, prompt in zip(ids, prompts):
        assert not core.add_request(EngineRequest(req_id, prompt, params)), "request refused"
    started: set[str] = set()
    while len(started) < len(ids):  # prefill (possibly chunked)
        started.update(eo.req_id for eo in core.step() if eo.new_token_ids)


def timed_steps(llm: LLM, batch: int) -> list[float]:
    """Seconds of each engine step that decoded the whole batch, until the decode finishes.

    With a chunked prefill the sequences that got their first token early also finish early,
    so the last steps run a smaller batch: those are not counted."""
    core, times = llm.engine, []
    while core.has_unfinished_requests():
        t0 = time.perf_counter()
        outputs = core.step()
        if len(outputs) == batch:
            times.append(time.perf_counter() - t0)
    if not times:
        raise RuntimeError(f"no step decoded all {batch} sequences at once")
    return times


def decode_step_times(llm: LLM, prompts: list[list[int]], num_steps: int) -> list[float]:
    """Seconds of each of num_steps decode steps with len(prompts) sequences decoding."""
    start_decode(llm, prompts, num_steps)
    return timed_steps(llm, len(prompts))


def engine_for(ctx: RunContext, name: str, **settings) -> LLM:
    """The offline LLM on random weights of configuration `name` (load_format "random")."""
    return LLM.from_config(ctx.settings(**settings).engine_config(name))


def _profile(ctx: RunContext, llm: LLM, tag: str, workload: OfflineWorkload):
    """--profile for an offline workload: its full batch at its mean decode context."""
    from cormorant.bench.profiling import maybe_profile

    batch = min(len(workload.prompts), llm.config.scheduler.max_num_seqs)
    lens = workload.prompt_lens
    context = round(sum(lens) / len(lens) + workload.num_output_tokens / len(lens) / 2)
    return maybe_profile(ctx, llm, tag, batch, context)


# -- B1 ----------------------------------------------------------------------------------------
B1_ENGINE = dict(max_num_seqs=256, max_num_batched_tokens=16384, max_model_len=2048)


def run_b1(ctx: RunContext) -> dict:
    workload = b1_workload(ctx.scale)
    name = ctx.model("qwen3-0.6b")
    llm = engine_for(ctx, name, **B1_ENGINE)
    try:
        measured = time_offline(llm, workload)
        limits = Limits(B1_ENGINE["max_num_seqs"], B1_ENGINE["max_num_batched_tokens"],
                        kv_capacity_tokens(llm))
        cost = StepCost.of(llm.model_config, ctx.dtype_bytes, ctx.body_bytes,
                           kv_dtype_bytes=ctx.kv_dtype_bytes)
        profiled = _profile(ctx, llm, "b1", workload)
    finally:
        del llm
        release()
    floor = simulate(workload.prompt_lens, workload.max_tokens, cost, ctx.ceilings, limits)
    frac = fraction(floor.seconds, measured["seconds"])
    engine = {**B1_ENGINE, "kv_cache_dtype": ctx.kv_cache_dtype}
    label = "tok/s" if ctx.kv_cache_dtype == "auto" else f"tok/s, {ctx.kv_cache_dtype} KV"
    return {"bench": "b1", "model": name, "engine": engine, "workload": workload.summary(),
            "cormorant": measured, "floor": floor.to_dict(), "limits": vars(limits),
            "fraction_of_floor": frac, "target": {"output_tokens_per_s": B1_TARGET_TOK_S},
            "profile": profiled,
            "rows": [[label, fmt(measured["output_tokens_per_s"]),
                      fmt(floor.to_dict()["output_tokens_per_s"]), fmt(frac, 2), "-",
                      f">= {B1_TARGET_TOK_S:,}"]],
            "notes": []}


# -- B2 ----------------------------------------------------------------------------------------
B2_ENGINE = dict(max_num_seqs=8, max_num_batched_tokens=2048, max_model_len=1024)


def _b2_model(ctx: RunContext, real_name: str, prompt: list[int], new_tokens: int) -> dict:
    from cormorant.bench.profiling import maybe_profile

    name = ctx.model(real_name)
    llm = engine_for(ctx, name, **B2_ENGINE)
    try:
        decode_step_times(llm, [prompt[:16]], 8)  # warm-up
        times = decode_step_times(llm, [prompt], new_tokens - 1)
        cost = StepCost.of(llm.model_config, ctx.dtype_bytes, ctx.body_bytes,
                           kv_dtype_bytes=ctx.kv_dtype_bytes)
        profiled = maybe_profile(ctx, llm, f"b2_{name}", 1, len(prompt) + new_tokens // 2)
    finally:
        del llm
        release()
    mean_s = sum(times) / len(times)
    mean_context = len(prompt) + new_tokens / 2  # the step cost is linear in the context
    floor_s, step_bytes, _ = cost.decode_step(ctx.ceilings, 1, round(mean_context))
    return {"model": name, "ms_per_token": mean_s * 1e3,
            "median_ms": sorted(times)[len(times) // 2] * 1e3, "tokens_per_s": 1 / mean_s,
            "bytes_per_step": step_bytes, "achieved_GBps": step_bytes / mean_s / 1e9,
            "floor_ms": floor_s * 1e3, "fraction_of_floor": fraction(floor_s, mean_s),
            "target_ms": B2_TARGET_MS[real_name], "num_steps": len(times),
            "profile": profiled}


def run_b2(ctx: RunContext) -> dict:
    workload = b2_workload(ctx.scale)
    prompt = workload.prompt()
    per_model = {m: _b2_model(ctx, m, prompt, workload.new_tokens) for m in workload.models}
    rows = [[f"{r['model']} ms/tok", fmt(r["ms_per_token"], 2), fmt(r["floor_ms"], 2),
             fmt(r["fraction_of_floor"], 2), "-", f"<= {r['target_ms']}"]
            for r in per_model.values()]
    rows += [[f"{r['model']} GB/s", fmt(r["achieved_GBps"], 1),
              fmt(ctx.ceilings.copy_bytes_per_s / 1e9, 1), "", "", ""]
             for r in per_model.values()]
    return {"bench": "b2", "engine": B2_ENGINE,
            "workload": {"prompt_len": workload.prompt_len, "new_tokens": workload.new_tokens,
                         "sampling": "greedy, ignore_eos"},
            "cormorant": per_model, "rows": rows,
            "notes": ["ms/token = mean engine step time over the decode steps (the prefill "
                      "step excluded); GB/s = (weights + KV read + KV written) per step / step "
                      "time, at the mean context"]}


# -- B3 ----------------------------------------------------------------------------------------
B3_ENGINE = dict(max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=4096)


def run_b3(ctx: RunContext) -> dict:
    name = ctx.model("llama-3.1-8b")
    llm = engine_for(ctx, name, **B3_ENGINE)
    cases = []
    try:
        limits = Limits(B3_ENGINE["max_num_seqs"], B3_ENGINE["max_num_batched_tokens"],
                        kv_capacity_tokens(llm))
        cost = StepCost.of(llm.model_config, ctx.dtype_bytes, ctx.body_bytes,
                           kv_dtype_bytes=ctx.kv_dtype_bytes)
        for workload in b3_workloads(ctx.scale):
            measured = time_offline(llm, workload)
            floor = simulate(workload.prompt_lens, workload.max_tokens, cost, ctx.ceilings,
                             limits)
            cases.append({"case": workload.name, "workload": workload.summary(),
                          "cormorant": measured, "floor": floor.to_dict(),
                          "fraction_of_floor": fraction(floor.seconds, measured["seconds"]),
                          "profile": _profile(ctx, llm, workload.name, workload)})
    finally:
        del llm
        release()
    rows = [[c["case"] + " tok/s", fmt(c["cormorant"]["output_tokens_per_s"]),
             fmt(c["floor"]["output_tokens_per_s"]), fmt(c["fraction_of_floor"], 2), "-",
             f">= {B3_TARGET_FRACTION} of floor"] for c in cases]
    return {"bench": "b3", "model": name, "engine": B3_ENGINE, "limits": vars(limits),
            "cases": cases, "rows": rows, "notes": []}
