"""CPU smoke run of `cormorant bench b1s --tiny` (B1 under a JSON schema vs unconstrained):
it runs end to end for both schemas (open and length-bounded strings), every constrained
request gets its unconstrained twin of equal length, and the engine's grammar host times come
back."""
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
    assert set(result["results"]) == {"open", "bounded", "open, quotes favoured"}
    assert all(len(schema["required"]) == 10 for schema in result["schemas"].values())
    for label, one in result["results"].items():
        assert one["output_tokens"] > 0
        assert one["constrained"]["output_tokens_per_s"] > 0
        assert one["fraction_of_unconstrained"] > 0
        host = one["grammar_host"]  # the engine timed its mask fills and matcher advances
        assert host["fills"] > 0 and host["rows"] >= host["fills"] and host["fill_s"] > 0
    assert "maxLength" not in json.dumps(result["schemas"]["open"])
