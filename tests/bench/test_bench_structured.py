"""CPU smoke run of `cormorant bench b1s --tiny` (B1 under a JSON schema vs unconstrained):
it runs end to end, every constrained request gets its unconstrained twin of equal length."""
from __future__ import annotations

import argparse
import json

from cormorant.bench.cli import add_bench_args, run_bench


def test_b1s_runs_on_the_cpu(tmp_path):
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    args = parser.parse_args(["b1s", "--no-peer", "--tiny", "--device", "cpu", "--out",
                              str(tmp_path)])
    assert run_bench(args) == 0
    result = json.loads((tmp_path / "results.json").read_text())["results"]["b1s"]
    assert "error" not in result, result.get("error")
    assert result["output_tokens"] > 0
    assert result["constrained"]["output_tokens_per_s"] > 0
    assert result["fraction_of_unconstrained"] > 0
    assert len(result["schema"]["required"]) == 10
