"""Print the floor of every workload of issue #4 at given ceilings, without any device.

    python benchmarks/floors_table.py                      # the issue's H100: 3.0 TB/s, 806 TFLOP/s
    python benchmarks/floors_table.py --copy-tbps 4.3 --tflops 790 --memory-gib 141   # an H200

The same model as `cormorant bench` (cormorant/bench/floors.py), with the KV capacity
estimated as the engine sizes it (0.9 of device memory less the weights) instead of read
from a built engine. Used to fill the reference columns of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse

from cormorant.bench.configs import model_config
from cormorant.bench.floors import Ceilings, Limits, StepCost, simulate
from cormorant.bench.offline import B1_ENGINE, B3_ENGINE
from cormorant.bench.online import B4_ENGINE
from cormorant.bench.workloads import b1_workload, b2_workload, b3_workloads, b4_workload


def kv_capacity(name: str, memory_gib: float) -> int:
    cost = StepCost.of(model_config(name))
    free = 0.9 * memory_gib * 2**30 - cost.weight_bytes
    return int(free // cost.kv_bytes_per_token)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--copy-tbps", type=float, default=3.0)
    p.add_argument("--tflops", type=float, default=806.0)
    p.add_argument("--memory-gib", type=float, default=80.0)
    p.add_argument("--scale", default="full", choices=["full", "quick"])
    args = p.parse_args()
    ceil = Ceilings("reference", args.copy_tbps * 1e12, args.tflops * 1e12, "bfloat16")
    print(f"ceilings: copy {args.copy_tbps} TB/s, bf16 matmul {args.tflops} TFLOP/s, "
          f"{args.memory_gib} GiB; scale {args.scale}\n")

    wl = b1_workload(args.scale)
    limits = Limits(B1_ENGINE["max_num_seqs"], B1_ENGINE["max_num_batched_tokens"],
                    kv_capacity("qwen3-0.6b", args.memory_gib))
    f = simulate(wl.prompt_lens, wl.max_tokens, StepCost.of(model_config("qwen3-0.6b")), ceil,
                 limits)
    print(f"B1 qwen3-0.6b: {f.seconds:.2f} s, {f.to_dict()['output_tokens_per_s']:,.0f} tok/s, "
          f"{f.steps} steps ({f.memory_bound_steps} memory-bound), {f.bytes / 1e12:.2f} TB moved")

    b2 = b2_workload(args.scale)
    for name in b2.models:
        s, nbytes, _ = StepCost.of(model_config(name)).decode_step(
            ceil, 1, b2.prompt_len + b2.new_tokens // 2)
        print(f"B2 {name}: {s * 1e3:.3f} ms/token ({1 / s:,.0f} tok/s), "
              f"{nbytes / 1e9:.2f} GB per step")

    cost = StepCost.of(model_config("llama-3.1-8b"))
    limits = Limits(B3_ENGINE["max_num_seqs"], B3_ENGINE["max_num_batched_tokens"],
                    kv_capacity("llama-3.1-8b", args.memory_gib))
    for wl in b3_workloads(args.scale):
        f = simulate(wl.prompt_lens, wl.max_tokens, cost, ceil, limits)
        print(f"B3 {wl.name} x{len(wl.prompts)}: {f.seconds:.2f} s, "
              f"{f.to_dict()['output_tokens_per_s']:,.0f} tok/s, {f.steps} steps "
              f"({f.memory_bound_steps} memory-bound)")

    b4 = b4_workload(args.scale)
    cost = StepCost.of(model_config(b4.model))
    for batch in (1, 16, 64, 128, B4_ENGINE["max_num_seqs"]):
        s, _, _ = cost.decode_step(ceil, batch, b4.prompt_len + b4.output_len // 2)
        print(f"B4 decode step at batch {batch}: {s * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
