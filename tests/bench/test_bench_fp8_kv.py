"""`cormorant bench b1 --kv-cache-dtype fp8`: B1 on an fp8 KV cache (a tiny CPU run), and the
floor's KV bytes of an fp8 cache."""
from __future__ import annotations

import argparse
import json

from cormorant.bench.cli import add_bench_args, run_bench
from cormorant.bench.configs import config_dir
from cormorant.bench.floors import StepCost
from cormorant.bench.workloads import b1_workload
from cormorant.models.hf_loader import hf_model_config


def test_b1_runs_on_an_fp8_kv_cache(tmp_path):
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    args = parser.parse_args(["b1", "--no-peer", "--kv-cache-dtype", "fp8", "--tiny",
                              "--device", "cpu", "--out", str(tmp_path)])
    assert run_bench(args) == 0
    b1 = json.loads((tmp_path / "results.json").read_text())["results"]["b1"]
    assert "error" not in b1 and b1["engine"]["kv_cache_dtype"] == "fp8"
    assert b1["cormorant"]["output_tokens"] == b1_workload("tiny").num_output_tokens
    assert b1["rows"][0][0] == "tok/s, fp8 KV"
    assert b1["args"]["kv_cache_dtype"] == "fp8"


def test_floor_counts_one_byte_per_fp8_kv_element():
    cfg = hf_model_config(str(config_dir("qwen3-0.6b")))
    bf16, fp8 = StepCost.of(cfg, 2), StepCost.of(cfg, 2, kv_dtype_bytes=1)
    assert bf16.kv_bytes_per_token == 2 * fp8.kv_bytes_per_token
    assert fp8.kv_bytes_per_token == 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim
    assert bf16.weight_bytes == fp8.weight_bytes
