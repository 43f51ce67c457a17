"""The floor model: byte and FLOP coefficients against the real model, the issue's reference
figures, and the ideal-schedule simulator's bookkeeping."""
from __future__ import annotations

import pytest
import torch

from cormorant.bench.configs import model_config
from cormorant.bench.floors import Ceilings, Limits, StepCost, measure_ceilings, simulate
from cormorant.bench.workloads import b1_workload
from cormorant.layers.attention import TorchAttention
from cormorant.models.registry import build_model

H100 = Ceilings("H100 (issue #4)", 3.0e12, 806e12, "bfloat16")


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-llama"])
def test_weight_bytes_match_the_model(name):
    cfg = model_config(name)
    with torch.device("meta"):
        model = build_model(cfg, TorchAttention(), torch.bfloat16, "meta")
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    # An untied input embedding is gathered row by row, never read whole in a step.
    read = total if cfg.tie_word_embeddings else total - cfg.vocab_size * cfg.hidden_size
    cost = StepCost.of(cfg, dtype_bytes=2)
    assert cost.weight_bytes == 2 * read


def test_b1_floor_reproduces_the_issue_figure():
    wl = b1_workload()
    cost = StepCost.of(model_config("qwen3-0.6b"))
    floor = simulate(wl.prompt_lens, wl.max_tokens, cost, H100, Limits(256, 16384))
    tok_s = floor.to_dict()["output_tokens_per_s"]
    assert 25_000 < tok_s < 26_500  # the issue: ~25,700 tok/s at 3.0 TB/s
    assert floor.memory_bound_steps > 0.95 * floor.steps  # dominated by reading the KV cache
    assert floor.steps == max(wl.max_tokens) + 8  # ~8 prefill steps, then one per token


def test_b2_llama_floor_matches_the_target_arithmetic():
    cost = StepCost.of(model_config("llama-3.1-8b"))
    seconds, _, _ = cost.decode_step(H100, batch=1, context=256)
    assert 4.95e-3 < seconds < 5.05e-3  # 5.9 ms/token is then 0.85 of the floor


def test_simulator_bookkeeping():
    cost = StepCost.of(model_config("tiny-llama"))
    prompts, outputs = [5, 9, 3], [4, 1, 6]
    floor = simulate(prompts, outputs, cost, H100, Limits(8, 1024))
    assert floor.steps == 6  # one step of prefill (all fit), then 5 decode steps for the longest
    # Written: 17 prompt tokens, then 2, 2, 2, 1, 1 decode tokens. Read by the decode steps:
    # seq 0 attends over 6, 7, 8 tokens and seq 2 over 4, 5, 6, 7, 8.
    kv_tokens = (17 + 8) + (6 + 7 + 8) + (4 + 5 + 6 + 7 + 8)
    assert floor.bytes == 6 * cost.weight_bytes + kv_tokens * cost.kv_bytes_per_token


def test_simulator_respects_limits():
    cost = StepCost.of(model_config("tiny-llama"))
    prompts, outputs = [10] * 8, [10] * 8
    free = simulate(prompts, outputs, cost, H100, Limits(8, 1024))
    one_at_a_time = simulate(prompts, outputs, cost, H100, Limits(1, 1024))
    small_kv = simulate(prompts, outputs, cost, H100, Limits(8, 1024, kv_capacity_tokens=40))
    assert free.steps == 10
    assert one_at_a_time.steps == 80 and small_kv.steps == 40  # two sequences fit at a time
    with pytest.raises(ValueError):
        simulate([100], [10], cost, H100, Limits(8, 1024, kv_capacity_tokens=50))


def test_ceilings_measure_on_cpu():
    ceil = measure_ceilings(torch.device("cpu"), torch.float32, repeats=2)
    assert ceil.copy_bytes_per_s > 1e8 and ceil.matmul_flops_per_s > 1e8


def test_b2_llama_int4_floor_counts_the_quantized_bytes():
    """--quantization int4: codes (0.5 byte) plus a bf16 scale per 128 weights in the decoder
    projections, the LM head in bf16: the issue's int4 floor of about 1.6 ms."""
    cost = StepCost.of(model_config("llama-3.1-8b"), 2, body_bytes=0.5 + 2 / 128)
    seconds, _, _ = cost.decode_step(H100, batch=1, context=256)
    assert 1.5e-3 < seconds < 1.65e-3
