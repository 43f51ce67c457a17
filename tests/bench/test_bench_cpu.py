"""CPU smoke runs of `cormorant bench` with --tiny: every benchmark end to end in seconds,
so CI proves the suite runs. Numbers on a shared CPU mean nothing; counts, floors and JSON do."""
from __future__ import annotations

import argparse
import json

import pytest

from cormorant.bench.cli import add_bench_args, run_bench
from cormorant.bench.workloads import b1_workload, b3_workloads, b4_workload


def _run(tmp_path, *argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    args = parser.parse_args([*argv, "--tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert run_bench(args) == 0
    return json.loads((tmp_path / "results.json").read_text())["results"]


def _check_common(result: dict) -> None:
    assert "error" not in result
    for key in ("card", "date", "commit", "torch"):
        assert result["env"][key]
    assert result["ceilings"]["copy_bytes_per_s"] > 0
    assert result["ceilings"]["matmul_flops_per_s"] > 0


def test_offline_benchmarks_end_to_end(tmp_path, capsys):
    results = _run(tmp_path, "b1", "b2", "b3", "--no-peer", "--profile")
    for name in ("b1", "b2", "b3"):
        _check_common(results[name])
        assert (tmp_path / f"{name}.json").exists()
    b1 = results["b1"]
    assert b1["cormorant"]["output_tokens"] == b1_workload("tiny").num_output_tokens
    assert b1["floor"]["output_tokens"] == b1["cormorant"]["output_tokens"]
    assert 0 < b1["fraction_of_floor"]
    for model in b1, *results["b2"]["cormorant"].values():
        assert model["model"].startswith("tiny-")
    for r in results["b2"]["cormorant"].values():
        assert r["num_steps"] == 15 and r["ms_per_token"] > 0 and r["floor_ms"] > 0
    cases = results["b3"]["cases"]
    assert [c["cormorant"]["output_tokens"] for c in cases] == \
        [w.num_output_tokens for w in b3_workloads("tiny")]
    assert b1["profile"]["steps"] > 0 and (tmp_path / "b1_profile.txt").exists()
    assert all(c["profile"] for c in cases)
    table = capsys.readouterr().out
    assert "bench  case" in table and "b3-16/16" in table


def test_serving_benchmark_end_to_end(tmp_path):
    b4 = _run(tmp_path, "b4")["b4"]
    _check_common(b4)
    workload = b4_workload("tiny")
    assert [s["rate"] for s in b4["rates"]] == list(workload.rates)
    for s in b4["rates"]:
        assert s["completed"] == s["num_requests"] == workload.num_requests(s["rate"])
        assert s["output_tokens"] == s["completed"] * workload.output_len
        for metric in ("ttft_ms", "tpot_ms", "itl_ms"):
            assert s[metric]["p50"] is not None and s[metric]["p99"] >= s[metric]["p50"]
    assert b4["best_rate"] is not None
    step = b4["decode_step_at_best"]
    assert step["step_ms_p50"] > 0 and step["floor_ms"] > 0


def test_generate_peer_runs_on_the_same_workload(tmp_path):
    b2 = _run(tmp_path, "b2", "--peer")["b2"]
    peer = b2["peer"]
    if not peer.get("available"):
        pytest.skip(f"transformers peer unavailable here: {peer.get('reason')}")
    assert [c["model"] for c in peer["cases"]] == ["tiny-qwen3", "tiny-llama"]
    assert all(c["ms_per_token"] > 0 for c in peer["cases"])


def test_b4_load_split_over_client_processes(tmp_path):
    """drive_sharded: the same Poisson run sent by two client processes (bench.load_client)
    against the real random-weight server; every request completes and the merged results
    summarise like a single client's."""
    from cormorant.bench.online import client_shards
    from cormorant.bench.serving import drive_sharded, start_server, summarize

    assert [client_shards(r) for r in (2, 8, 16, 32, 64, 200)] == [1, 1, 1, 2, 4, 8]
    workload = b4_workload("tiny")
    server = start_server("tiny-qwen3", "cpu", "float32", tmp_path / "server.log",
                          ["--max-num-seqs=16", "--max-model-len=256", "--num-kv-blocks=256"])
    try:
        run = workload.run(8.0)
        results, wall, lags = drive_sharded(server.base_url, server.model_name, run,
                                            workload.temperature, 2, tmp_path)
    finally:
        server.stop()
    summary = summarize(run, results, wall, lags)
    assert summary["completed"] == summary["num_requests"] == len(run.prompts)
    assert summary["output_tokens"] == len(run.prompts) * run.max_tokens
    # Both shards kept the run's one clock: no request left before its arrival time, and the
    # arrival times are the run's offsets from one t0. (How late a send is depends on the
    # machine's load, so it is not asserted: a busy 2-core CI machine delays processes by
    # seconds.)
    assert all(r.send >= r.scheduled for r in results)
    t0 = min(r.scheduled for r in results) - min(run.arrival_offsets)
    assert sorted(round(r.scheduled - t0, 6) for r in results) == \
        sorted(round(o, 6) for o in run.arrival_offsets)
    assert all(r.first_token >= r.send for r in results) and wall > 0
