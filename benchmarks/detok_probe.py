"""B1 with the offline text decoded once per sample (the default) against token-by-token
incremental detokenization, on one engine, alternating (deferred, incremental, deferred,
incremental) so warm-up falls on neither side. `python3 benchmarks/detok_probe.py`."""
from __future__ import annotations

import json

from cormorant.bench.context import EngineSettings
from cormorant.bench.offline import B1_ENGINE, time_offline
from cormorant.bench.workloads import b1_workload
from cormorant.frontend.llm import LLM


def main() -> None:
    llm = LLM.from_config(EngineSettings(**B1_ENGINE).engine_config("qwen3-0.6b"))
    workload = b1_workload("quick")
    original = LLM._add
    for incremental in (False, True, False, True):
        def add(self, prompt_ids, params, prompt, incremental_=incremental, **_):
            return original(self, prompt_ids, params, prompt, incremental=incremental_)

        LLM._add = add
        row = time_offline(llm, workload)
        print(json.dumps({"incremental": incremental, **row}), flush=True)
    LLM._add = original


if __name__ == "__main__":
    main()
