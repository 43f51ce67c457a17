"""`cormorant bench b1|b2|b3|b4|b5|b1s|b4b|all [--quick] [--out DIR] [--peer/--no-peer] ...`.

b1s (B1 under a JSON schema, bench.structured), b4b (B4 beside a batch job,
bench.online_batch) and b5 (the CPU edge path) run only when named; `all` is B1-B4.

`add_bench_args(parser)` and `run_bench(args) -> int` are what cormorant.cli wires in; this
module also runs alone (`python -m cormorant.bench.cli b1 --quick`). The order of work: the
ceilings once; then cormorant's runs of every benchmark asked for (each writes its JSON as it
finishes); then the transformers peers with whatever time budget is left, so a tight budget
costs peer numbers, never cormorant's. The table is printed last.
Imports bench modules, cormorant.engine_args and the standard library.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from cormorant.engine_args import add_engine_args

BENCHES = ("b1", "b2", "b3", "b4")  # `all`: the GPU suite
CPU_BENCHES = ("b5",)  # the CPU and edge path (bench.cpu_edge), run by name
# `all` on an H100 at --quick: ~4 min of cormorant work (at the targets) + ~4 min of peers;
# 540 s keeps any one command inside a 10-minute device call.
DEFAULT_BUDGET_S = 540.0


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("benches", nargs="+", choices=[*BENCHES, *CPU_BENCHES, "b1s", "b4b", "all"],
        help="which benchmarks to run (b1s: B1 under a JSON schema vs unconstrained; "
             "b4b: B4's TTFT alone and beside a running batch job; "
             "b5: the CPU edge path against llama.cpp)")
    add("--quick", action="store_true",
        help="fewer prompts (B3), rates (B4) and shorter peer caps; B1 and B2 stay exact")
    add("--tiny", action="store_true",
        help="tiny model configurations and workloads (CPU smoke runs; numbers meaningless)")
    add("--out", default="bench-results", help="folder for the JSON results and logs")
    add("--peer", action=argparse.BooleanOptionalAction, default=True,
        help="also run transformers on the same workloads (default: on)")
    add("--profile", action="store_true",
        help="after each timed run, profile a few decode steps at its batch size and context "
             "(OUT/*_profile.txt: device vs host time, top operators)")
    add("--budget-s", type=float, default=DEFAULT_BUDGET_S,
        help="time budget in seconds (0: none); peers and B4 rates that would overrun it are "
             "skipped, cormorant's own runs never (default: %(default).0f)")
    add("--b4b-rate", type=float, default=None,
        help="b4b: the interactive request rate (default: B4's best measured rate at the "
             "scale, 32 req/s)")
    # The engine flags a benchmark run takes (device, dtype, async scheduling, B4's engine
    # process); the rest each benchmark sets itself (cormorant.engine_args says which).
    add_engine_args(parser, "bench")


def _runners():
    from cormorant.bench.offline import run_b1, run_b2, run_b3
    from cormorant.bench.cpu_edge import run_b5
    from cormorant.bench.online import run_b4
    from cormorant.bench.online_batch import run_b4_batch
    from cormorant.bench.structured import run_b1_structured

    return {"b1": run_b1, "b2": run_b2, "b3": run_b3, "b4": run_b4, "b5": run_b5,
            "b1s": run_b1_structured, "b4b": run_b4_batch}


def run_bench(args: argparse.Namespace) -> int:
    from cormorant.bench.context import make_context
    from cormorant.bench.peers import PEERS
    from cormorant.bench.report import environment, table, write_json

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = list(BENCHES) if "all" in args.benches else list(dict.fromkeys(args.benches))
    scale = "tiny" if args.tiny else "quick" if args.quick else "full"
    budget = args.budget_s if args.budget_s and args.budget_s > 0 else None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    ctx = make_context(scale, args.device, args.dtype, out_dir, budget, args.profile)
    ctx.async_scheduling = args.async_scheduling
    ctx.engine_process = args.engine_process
    ctx.threads = args.threads
    ctx.b4b_rate = args.b4b_rate
    ctx.quantization = args.quantization
    ctx.env = environment(ctx.ceilings.device_name)
    header = {"env": ctx.env, "ceilings": ctx.ceilings.to_dict(), "scale": scale,
              "args": {k: v for k, v in vars(args).items() if not callable(v)}}
    print(f"ceilings on {ctx.ceilings.device_name}: copy "
          f"{ctx.ceilings.copy_bytes_per_s / 1e12:.2f} TB/s, {ctx.dtype_name} matmul "
          f"{ctx.ceilings.matmul_flops_per_s / 1e12:.1f} TFLOP/s", flush=True)
    results, status = [], 0
    runners = _runners()
    for name in names:
        t0 = time.monotonic()
        try:
            result = runners[name](ctx)
        except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the rest
            logging.getLogger(__name__).exception("%s failed", name)
            result, status = {"bench": name, "error": f"{type(e).__name__}: {e}",
                              "rows": [["error", str(e)[:60], "", "", "", ""]]}, 1
        result.update(header, seconds=time.monotonic() - t0)
        results.append(result)
        write_json(out_dir, name, result)
        print(f"{name} done in {result['seconds']:.0f} s", flush=True)
        for row in result["rows"]:  # in the log at once, in case the call is cut short
            print("   ", " | ".join(str(c) for c in row if c), flush=True)
    for result in results:
        if args.peer and result["bench"] in PEERS and "error" not in result:
            t0 = time.monotonic()
            PEERS[result["bench"]](ctx, result)
            result["peer_seconds"] = time.monotonic() - t0
            write_json(out_dir, result["bench"], result)
            print(f"{result['bench']} peer done in {result['peer_seconds']:.0f} s", flush=True)
    summary = {**header, "total_seconds": time.monotonic() - start,
               "results": {r["bench"]: r for r in results}}
    write_json(out_dir, "results", summary)
    print(f"\n{ctx.env['card']} | {ctx.env['date']} | commit {ctx.env['commit']} | scale {scale}"
          f" | {summary['total_seconds']:.0f} s | JSON in {out_dir}/")
    print(table(results))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cormorant bench", description="The benchmark suite of issue #4 (B1-B4): "
        "cormorant on random weights against the physical floor and transformers.")
    add_bench_args(parser)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
