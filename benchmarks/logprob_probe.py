"""Chosen-token logprob probe: what drift monitoring's confidence feature costs the sampler.

Times one Sampler call on [N, V] float32 logits for all-greedy rows three ways: no logprobs
(the plain argmax path), logprobs=0 (the chosen token's logprob: logit - logsumexp, what the
server asks for when drift monitoring tracks mean_logprob) and logprobs=1 (a full log_softmax
plus top-1, what logprobs=0 cost before it had its own path). Each time is the median of 7
CUDA-event timings of 50 back-to-back calls (SamplingMetadata built once, outside the timing).
Run from the repository root on a CUDA machine (CPU works, slowly):
    python benchmarks/logprob_probe.py [--rows 1,8,64,256] [--vocab 32000,151936] [--out F]
Imports torch and cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from cormorant.runner.request_state import RequestState  # noqa: E402
from cormorant.runner.sampler import Sampler, SamplingMetadata  # noqa: E402
from cormorant.sampling_params import SamplingParams  # noqa: E402

CALLS = 50


def _time(fn, device: torch.device) -> float:
    """Median microseconds per call."""
    samples = []
    for _ in range(7):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(CALLS):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1000 / CALLS)
        else:
            t0 = time.perf_counter()
            for _ in range(CALLS):
                fn()
            samples.append((time.perf_counter() - t0) * 1e6 / CALLS)
    return statistics.median(samples)


def probe(num_rows: int, vocab: int, device: torch.device) -> dict:
    logits = torch.randn(num_rows, vocab, device=device)  # [N, V]
    sampler, row = Sampler(0), {}
    for name, logprobs in (("none", None), ("chosen", 0), ("top1", 1)):
        seqs = [RequestState(i, 0, SamplingParams(temperature=0, logprobs=logprobs), [1, 2], 2)
                for i in range(num_rows)]
        meta = SamplingMetadata.build(seqs, device)
        _time(lambda: sampler(logits, meta), device)  # warm up
        row[name] = round(_time(lambda: sampler(logits, meta), device), 2)
    return {"num_rows": num_rows, "vocab": vocab, "us": row}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--rows", default="1,8,64,256", help="batch sizes N")
    parser.add_argument("--vocab", default="32000,151936", help="vocabulary sizes V")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    results = [probe(int(n), int(v), device) for v in args.vocab.split(",")
               for n in args.rows.split(",")]
    for r in results:
        print(name, r)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": name, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
