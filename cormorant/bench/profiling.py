"""`--profile`: where the time of a decode step goes, measured, for RESULTS.md's misses.

After a benchmark's timed run (never during it: the profiler slows what it watches), a few
decode steps at the benchmark's batch size and context are run under torch.profiler. Written
to OUT/<bench>_<case>_profile.txt: wall time per step, device-kernel time per step (their ratio
says whether the step is bound by the GPU or by the host: Python, launches, syncs), and the
operators that took the most device time, then the most host time.
Imports bench.offline (decode_step_times); torch.profiler.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cormorant.bench.offline import decode_step_times, start_decode, timed_steps
from cormorant.bench.workloads import random_prompts


# torch renamed cuda_time -> device_time; each is tried in this order.
_DEVICE_KEYS = ("self_device_time_total", "self_cuda_time_total")


def _device_time_us(event) -> float:
    for name in _DEVICE_KEYS:
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def _table(averages, sort_keys: tuple[str, ...], rows: int) -> str:
    for key in sort_keys:
        try:
            return averages.table(sort_by=key, row_limit=rows)
        except (AttributeError, KeyError, ValueError):
            continue
    return f"(none of {sort_keys} in this torch release)"


def profile_decode(llm, batch: int, context: int, out_path: Path, num_steps: int = 8) -> dict:
    """Profile num_steps decode steps of `batch` sequences at `context` tokens; write the
    report to out_path and return its summary numbers."""
    prompts = random_prompts(batch, context, seed=77)
    decode_step_times(llm, [p[:16] for p in prompts[:2]], 2)  # warm the shapes' kernels
    activities = [ProfilerActivity.CPU]
    if llm.engine.runner.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    # Sequences admitted in the first prefill chunks decode while later ones still prefill,
    # and finish that many steps earlier: ask for enough steps that the full batch decodes.
    prefill_steps = -(-batch * context // llm.config.scheduler.max_num_batched_tokens)
    start_decode(llm, prompts, num_steps + prefill_steps)  # the prefill stays outside
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        times = timed_steps(llm, batch)
    total_s = time.perf_counter() - t0
    averages = prof.key_averages()
    device_us = sum(_device_time_us(e) for e in averages)
    wall_ms = sum(times) / len(times) * 1e3
    device_ms = device_us / 1e3 / len(times)
    summary = {"batch": batch, "context": context, "steps": len(times),
               "wall_ms_per_step": wall_ms, "device_kernel_ms_per_step": device_ms,
               "device_busy_fraction": device_ms / wall_ms if wall_ms else None,
               "profiled_seconds": total_s, "report": str(out_path)}
    lines = [f"decode steps at batch {batch}, context {context}: {len(times)} steps profiled",
             f"wall per step (under the profiler): {wall_ms:.3f} ms",
             f"device kernels per step: {device_ms:.3f} ms -> device busy "
             f"{summary['device_busy_fraction'] or 0:.0%} of the wall time", "",
             "== by device time ==", _table(averages, _DEVICE_KEYS, 30), "",
             "== by host time ==", _table(averages, ("self_cpu_time_total",), 30)]
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if llm.engine.runner.device.type == "cuda":
        torch.cuda.synchronize()
    return summary


def maybe_profile(ctx, llm, tag: str, batch: int, context: int) -> dict | None:
    """profile_decode into OUT/<tag>_profile.txt when the run asked for --profile."""
    if not ctx.profile:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    return profile_decode(llm, batch, context, ctx.out_dir / f"{safe}_profile.txt")
