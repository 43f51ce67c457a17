"""Prefix-aware routing against round-robin over 2 Ray Serve replicas, on the CPU.

    python benchmarks/scaleout_prefix.py [--systems 4] [--per-system 24] [--concurrency 8]

The workload: `systems` shared system prompts (SYSTEM_LEN tokens each), each followed by
`per-system` different user turns (USER_LEN tokens), shuffled, streamed through the real
ingress with the openai client at a fixed concurrency, 4 tokens out each. The model: a random
Llama (tests/tiny.py, hidden 256, 4 layers). For each router (a fresh application, so cold
caches): the prompt tokens the replicas computed (prompt tokens looked up minus those served
from their prefix caches, from /metrics), the hit rate, and p50 / p90 time to first token.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "scaleout"))

SYSTEM_LEN, USER_LEN = 384, 24
ROUTERS = {"prefix-aware": "cormorant.scaleout.router:PrefixAwareRouter",
           "round-robin": "cormorant.scaleout.router:RoundRobinRouter"}


def workload(systems: int, per_system: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    heads = [[rng.randrange(3, 500) for _ in range(SYSTEM_LEN)] for _ in range(systems)]
    prompts = [head + [rng.randrange(3, 500) for _ in range(USER_LEN)]
               for head in heads for _ in range(per_system)]
    rng.shuffle(prompts)
    return prompts


async def run_load(url: str, prompts: list[list[int]], concurrency: int) -> list[float]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=600)
    queue = list(prompts)
    ttfts: list[float] = []

    async def worker() -> None:
        while queue:
            prompt = queue.pop()
            start = time.perf_counter()
            stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=4,
                                                     temperature=0, stream=True,
                                                     extra_body={"ignore_eos": True})
            first = None
            async for _ in stream:
                first = first or time.perf_counter()
            ttfts.append(first - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts


def measure(cluster_url: str, model: str, router: str, prompts, concurrency: int) -> dict:
    from ray import serve
    from ray_cluster import APP, deploy, metric_values

    from cormorant.scaleout.options import ScaleoutOptions

    deploy(cluster_url, model, ScaleoutOptions(
        num_replicas=2, max_replicas_per_node=1, num_cpus_per_replica=1,
        num_cpus_per_ingress=0.1, request_router=router))
    try:
        queries0 = metric_values(cluster_url, "cormorant_replica_prefix_cache_queries_total")
        hits0 = metric_values(cluster_url, "cormorant_replica_prefix_cache_hits_total")
        started = time.perf_counter()
        ttfts = asyncio.run(run_load(cluster_url, prompts, concurrency))
        wall = time.perf_counter() - started
        queries = metric_values(cluster_url, "cormorant_replica_prefix_cache_queries_total")
        hits = metric_values(cluster_url, "cormorant_replica_prefix_cache_hits_total")
    finally:
        serve.delete(APP)
    looked_up = sum(queries.values()) - sum(queries0.values())
    cached = sum(hits.values()) - sum(hits0.values())
    per_replica = {r: int(queries[r] - queries0.get(r, 0)) for r in queries}
    ttfts.sort()
    return {"prompt_tokens": looked_up, "computed": looked_up - cached,
            "hit_rate": cached / max(1, looked_up), "p50_ttft_ms": 1000 * statistics.median(ttfts),
            "p90_ttft_ms": 1000 * ttfts[int(0.9 * (len(ttfts) - 1))], "wall_s": wall,
            "tokens_per_replica": sorted(per_replica.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", type=int, default=4)
    parser.add_argument("--per-system", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    from ray_cluster import two_node_cluster
    from tiny import save_model

    model = str(save_model(Path(tempfile.mkdtemp()) / "bench-llama", hidden_size=256,
                           intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                           num_key_value_heads=4))
    prompts = workload(args.systems, args.per_system)
    rows = {}
    with two_node_cluster() as cluster:
        for name, router in ROUTERS.items():
            rows[name] = measure(cluster.url, model, router, prompts, args.concurrency)
            print(name, rows[name], flush=True)
    print(f"\n{len(prompts)} requests, {args.systems} system prompts of {SYSTEM_LEN} tokens + "
          f"{USER_LEN}, concurrency {args.concurrency}, 2 replicas\n")
    print("| router | prompt tokens | computed | prefix-cache hit rate | p50 TTFT ms | "
          "p90 TTFT ms | wall s | tokens per replica |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['prompt_tokens']:.0f} | {r['computed']:.0f} | "
              f"{r['hit_rate']:.2f} | {r['p50_ttft_ms']:.0f} | {r['p90_ttft_ms']:.0f} | "
              f"{r['wall_s']:.1f} | {r['tokens_per_replica']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
