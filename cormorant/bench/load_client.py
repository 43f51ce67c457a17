"""One shard of B4's load generator, in its own process.

`python -m cormorant.bench.load_client RUN_JSON OUT_JSON URL MODEL TEMPERATURE SHARD SHARDS T0`.
Sends the run's requests i with i % SHARDS == SHARD at T0 (time.monotonic()) + their arrival
offsets, and writes their RequestResults and its event-loop lags as JSON.
Imports bench.serving and bench.workloads.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from cormorant.bench.serving import drive
from cormorant.bench.workloads import ServingRun


def main(argv: list[str]) -> int:
    run_file, out_file, url, model, temperature, shard, shards, t0 = argv
    run = ServingRun(**json.loads(Path(run_file).read_text()))
    indices = list(range(int(shard), len(run.prompts), int(shards)))
    results, _, lags = asyncio.run(drive(url, model, run, float(temperature), indices,
                                         float(t0)))
    Path(out_file).write_text(json.dumps({"results": [dataclasses.asdict(r) for r in results],
                                          "lags": lags}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
