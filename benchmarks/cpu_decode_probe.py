"""CPU time of the quantized CPU decode step (issue #13): 16 rows and 1 row, in the real engine.

    PYTHONPATH=$PWD python3 benchmarks/cpu_decode_probe.py [--rows 16 1] [--steps 24]
        [--threads 1] [--profile torch|cprofile] [--compile]

Loads the embedded SmolLM2 GGUF with `--quantization gguf`, --threads intra-op threads (1),
eager (unless --compile), then per row count: prefills that many 128-token prompts (prefix-
cached first, so the profiled run's prefill is a token a prompt) and decodes; every engine
step's `ModelRunner.execute` is timed in thread CPU time (`time.thread_time`: the shared
machine's other load does not count; with 2 threads it misses the second thread's work) and in
wall time, and the pure-decode steps' medians are printed (ms a step, and tok/s from the CPU
time with 1 thread, from the wall time with more). --profile wraps the decode steps of the last
row count in the torch profiler (top ops by self CPU time, shapes recorded) or cProfile (top
functions).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import time


def _toggle(prof, on: bool) -> None:
    """Profile the decode steps only."""
    if isinstance(prof, cProfile.Profile):
        prof.enable() if on else prof.disable()
    elif prof is not None:
        from torch.profiler import ProfilerActivity

        prof.toggle_collection_dynamic(on, [ProfilerActivity.CPU])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--steps", type=int, default=24, help="new tokens per sequence")
    parser.add_argument("--profile", choices=["torch", "cprofile"], default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="as B5 runs: the prompts are prefilled in the timed run")
    parser.add_argument("--ids", default=None, help="write the greedy ids (JSON) here")
    args = parser.parse_args(argv)
    if args.compile:
        os.environ["CORMORANT_CPU_COMPILE"] = "1"

    import torch

    from cormorant.bench.cpu_edge import PROMPT_TOKENS, prompts
    from cormorant.frontend.default_model import default_model_path
    from cormorant.frontend.llm import LLM
    from cormorant.runner.model_runner import ModelRunner
    from cormorant.sampling_params import SamplingParams

    model = default_model_path()
    llm = LLM(model, threads=args.threads, enable_prefix_caching=not args.no_prefix_cache,
              max_num_seqs=16,
              quantization="gguf", enforce_eager=not args.compile)
    all_prompts = prompts(model, max(args.rows))
    times: list[tuple[int, bool, float, float]] = []  # (rows, decode, thread CPU s, wall s)
    profiling = {"on": False}
    original = ModelRunner.execute

    def timed(self, batch):
        decode = batch.num_tokens == len(batch)
        if decode and profiling["on"]:
            _toggle(prof, True)
        t0, w0 = time.thread_time(), time.perf_counter()
        out = original(self, batch)
        times.append((len(batch), decode, time.thread_time() - t0, time.perf_counter() - w0))
        if decode and profiling["on"]:
            _toggle(prof, False)
        return out

    ModelRunner.execute = timed
    params = SamplingParams(max_tokens=args.steps, temperature=0, ignore_eos=True)
    llm.generate([all_prompts[0]], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    prof = None
    ids: dict[str, list[list[int]]] = {}
    for i, rows in enumerate(args.rows):
        last = i == len(args.rows) - 1
        if last and args.profile == "cprofile":
            prof = cProfile.Profile()
        profiling["on"] = last and args.profile is not None
        if not args.no_prefix_cache:
            llm.generate(all_prompts[:rows], SamplingParams(max_tokens=1, temperature=0))
        times.clear()  # the prompts are cached now: the timed run's prefill is a token each
        c0, w0 = time.process_time(), time.perf_counter()
        if last and args.profile == "torch":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                        record_shapes=True) as prof:
                _toggle(prof, False)
                outs = llm.generate(all_prompts[:rows], params)
        else:
            outs = llm.generate(all_prompts[:rows], params)
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
        ids[str(rows)] = [list(o.outputs[0].token_ids) for o in outs]
        steps = [t for n, d, t, _ in times if d and n == rows]
        walls = [w for n, d, _, w in times if d and n == rows]
        med, wall = statistics.median(steps), statistics.median(walls)
        print(f"{rows:>2} rows (prompt {PROMPT_TOKENS}): {len(steps)} decode steps, median "
              f"{med * 1e3:.1f} ms CPU a step (min {min(steps) * 1e3:.1f}), {wall * 1e3:.1f} "
              f"ms wall (min {min(walls) * 1e3:.1f}), "
              f"{rows / (med if args.threads == 1 else wall):.1f} tok/s; "
              f"whole generate {cpu_s / args.steps * 1e3:.1f} ms CPU, "
              f"{wall_s / args.steps * 1e3:.1f} ms wall a step; load {os.getloadavg()[0]:.2f}",
              flush=True)
    if args.ids:
        with open(args.ids, "w") as f:
            json.dump(ids, f)
    if args.profile == "cprofile":
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    elif args.profile == "torch":
        print(prof.key_averages(group_by_input_shape=bool(os.environ.get("SHAPES"))).table(
            sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40,
            max_shapes_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
