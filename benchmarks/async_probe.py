"""Where async scheduling loses time on B3's prefill-heavy shapes (issue #4).

One random-weight Llama-3.1-8B engine with B3's settings; EngineCore.async_scheduling is
flipped between runs of the same workloads (same weights, graphs and compiled kernels), in
the order off, on, on, off so that warm-up falls on neither side. Per run: wall time, engine
steps, and the host time of each step split into schedule / launch / collect (collect waits
for the device). Then one torch.profiler trace per mode of 128/128 (quick), summarised.

    python3 benchmarks/async_probe.py --out DIR [--model llama-3.1-8b] [--scale quick|full]
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from cormorant.bench.context import EngineSettings
from cormorant.bench.offline import B3_ENGINE, _sync, time_offline
from cormorant.bench.workloads import b3_workloads
from cormorant.frontend.llm import LLM


class StepClock:
    """Host seconds spent in schedule / launch / collect, and the number of steps."""

    def __init__(self, llm: LLM) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        core, runner = llm.engine, llm.engine.runner
        for owner, name in ((core.scheduler, "schedule"), (runner, "launch"),
                            (runner, "collect"), (runner, "execute")):
            setattr(owner, name, self._timed(getattr(owner, name), name))

    def _timed(self, fn, name):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - t0
                self.counts[name] += 1
        return wrapper

    def reset(self) -> dict:
        out = {k: {"seconds": round(v, 4), "calls": self.counts[k]}
               for k, v in self.totals.items()}
        self.totals.clear()
        self.counts.clear()
        return out


def profile(llm: LLM, workload, out: Path, tag: str) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    _sync(llm)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate(workload.prompts, workload.sampling_params())
        _sync(llm)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    cuda = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15)
    text = f"== {tag}: by self CPU time\n{table}\n== {tag}: by self CUDA time\n{cuda}\n"
    (out / f"profile-{tag}.txt").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--scale", default="quick")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = EngineSettings(async_scheduling=False, **B3_ENGINE)
    llm = LLM.from_config(settings.engine_config(args.model))
    clock = StepClock(llm)
    shapes = [w for w in b3_workloads(args.scale) if w.name in ("b3-128/128", "b3-2048/128")]
    results = []
    for workload in shapes:
        for mode in (False, True, True, False):
            llm.engine.async_scheduling = mode
            clock.reset()
            measured = time_offline(llm, workload)
            row = {"case": workload.name, "async": mode, **measured, "host": clock.reset()}
            results.append(row)
            print(json.dumps(row), flush=True)
    quick = [w for w in b3_workloads("quick") if w.name == "b3-128/128"][0]
    for mode in (False, True):
        llm.engine.async_scheduling = mode
        print(profile(llm, quick, out, f"async-{'on' if mode else 'off'}")[:6000], flush=True)
    (out / "async_probe.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(), "model": args.model, "scale": args.scale,
        "engine": B3_ENGINE, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
