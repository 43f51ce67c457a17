"""CPU smoke run of `cormorant bench b4b --tiny`: B4's workload alone, then beside a batch job
uploaded and started over HTTP on the same real server. Timings on a shared CPU mean nothing;
what is asserted is the harness: both windows complete, the batch ran during the second."""
from __future__ import annotations

import argparse
import json

from cormorant.bench.cli import add_bench_args, run_bench
from cormorant.bench.online_batch import BATCH_LINES_PER_REQUEST, BATCH_MAX_TOKENS
from cormorant.bench.workloads import b4_workload


def test_b4b_measures_ttft_alone_and_beside_a_running_batch(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    args = parser.parse_args(["b4b", "--tiny", "--device", "cpu", "--b4b-rate", "6",
                              "--out", str(tmp_path)])
    assert run_bench(args) == 0
    result = json.loads((tmp_path / "results.json").read_text())["results"]["b4b"]
    assert "error" not in result and result["rate"] == 6.0
    workload = b4_workload("tiny")
    num = workload.num_requests(6.0)
    for window in result["alone"], result["with_batch"]:
        assert window["rate"] == 6.0
        assert window["completed"] == window["num_requests"] == num
        assert window["output_tokens"] == num * workload.output_len
        assert 0 < window["ttft_ms"]["p50"] <= window["ttft_ms"]["p99"]
        assert window["output_tokens_per_s"] > 0
    assert result["ttft_p99_ratio"] == \
        result["with_batch"]["ttft_ms"]["p99"] / result["alone"]["ttft_ms"]["p99"]
    batch = result["batch"]
    assert batch["lines"] == BATCH_LINES_PER_REQUEST["tiny"] * num
    assert batch["max_tokens"] == BATCH_MAX_TOKENS["tiny"]
    # The batch was running throughout the window: lines were answered in it, none failed,
    # and it was still in progress when the window closed (then cancelled).
    assert batch["completed_before"] >= 1 and batch["completed_in_window"] >= 1
    assert batch["completed_after"] == batch["completed_before"] + batch["completed_in_window"]
    assert batch["failed_after"] == 0
    assert batch["status_after"] == "in_progress" and batch["outlasted_window"]
    assert any("not on a GPU" in n for n in result["notes"])
    out = capsys.readouterr().out
    assert "TTFT p99 with / alone" in out and "<= 1.2" in out


def test_b4b_windows_share_arrival_times_but_not_prompts():
    """The with-batch window replays the alone window's arrivals with prompts of its own, so
    neither window's TTFT is helped by the prefix cache holding the other's prompts."""
    from cormorant.bench.online_batch import fresh_prompts

    run = b4_workload("quick").run(32.0)
    other = fresh_prompts(run, seed=46)
    assert other.arrival_offsets == run.arrival_offsets and other.max_tokens == run.max_tokens
    assert [len(p) for p in other.prompts] == [len(p) for p in run.prompts]
    assert not {tuple(p[:16]) for p in other.prompts} & {tuple(p[:16]) for p in run.prompts}
    warm = fresh_prompts(run, seed=45, num=8)
    assert warm.arrival_offsets == run.arrival_offsets[:8] and len(warm.prompts) == 8
