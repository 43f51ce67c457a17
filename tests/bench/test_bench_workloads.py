"""The workloads of issue #4: B1 is nano-vllm's exactly, the others deterministic and shaped
as specified. Pure Python: no model, no torch work."""
from __future__ import annotations

import statistics

from cormorant.bench.workloads import (B1_OUTPUT_TOKENS, B3_SHAPES, b1_workload, b2_workload,
                                       b3_workloads, b4_workload)


def test_b1_is_nano_vllm_bench():
    wl = b1_workload()
    assert len(wl.prompts) == 256
    assert wl.num_output_tokens == B1_OUTPUT_TOKENS == 133_966
    assert sum(wl.prompt_lens) == 142_827  # same draws as nano-vllm's bench.py
    assert all(100 <= n <= 1024 for n in wl.prompt_lens)
    assert all(100 <= m <= 1024 for m in wl.max_tokens)
    assert all(0 <= t <= 10_000 for p in wl.prompts for t in p)
    params = wl.sampling_params()
    assert {p.temperature for p in params} == {0.6} and all(p.ignore_eos for p in params)
    assert [p.max_tokens for p in params] == wl.max_tokens


def test_b1_quick_is_still_exact():
    assert b1_workload("quick").num_output_tokens == B1_OUTPUT_TOKENS
    assert b1_workload("quick").prompts == b1_workload().prompts


def test_b2_shape():
    wl = b2_workload()
    assert (wl.prompt_len, wl.new_tokens) == (128, 256)
    assert wl.models == ("qwen3-0.6b", "llama-3.1-8b")
    assert len(wl.prompt()) == 128 and wl.prompt() == wl.prompt()


def test_b3_shapes_fixed_lengths():
    for scale in ("full", "quick"):
        workloads = b3_workloads(scale)
        assert [(w.prompt_lens[0], w.max_tokens[0]) for w in workloads] == list(B3_SHAPES)
        for w in workloads:
            assert len(set(w.prompt_lens)) == 1 and len(set(w.max_tokens)) == 1
            assert len({tuple(p) for p in w.prompts}) == len(w.prompts)  # no shared prefixes


def test_b4_poisson_arrivals():
    wl = b4_workload()
    assert (wl.prompt_len, wl.output_len) == (1024, 256)
    run = wl.run(32.0)
    assert len(run.prompts) == wl.num_requests(32.0) and all(len(p) == 1024 for p in run.prompts)
    gaps = [b - a for a, b in zip(run.arrival_offsets, run.arrival_offsets[1:])]
    assert all(g >= 0 for g in gaps)
    assert abs(statistics.mean(gaps) - 1 / 32) < 0.3 / 32  # exponential with mean 1/rate
    assert wl.run(32.0).arrival_offsets == run.arrival_offsets  # seeded
