"""`cormorant bench ... --quantization fp8`: the flag reaches the engines of B1-B3 (random
weights quantized at load: one byte per body weight in the runner's reported memory) and
their floors count those bytes."""
from __future__ import annotations

import argparse
import dataclasses

from cormorant.bench.cli import add_bench_args
from cormorant.bench.configs import model_config
from cormorant.bench.context import EngineSettings
from cormorant.bench.floors import StepCost
from cormorant.frontend.builder import build_engine
from cormorant.layers.fp8_linear import Fp8LinearMethod


def test_bench_quantization_fp8_builds_fp8_engines_and_floors():
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    args = parser.parse_args(["b2", "b3", "--tiny", "--quantization", "fp8"])
    settings = EngineSettings(device="cpu", num_kv_blocks=32, max_model_len=128)
    fp8 = build_engine(dataclasses.replace(settings, quantization=args.quantization)
                       .engine_config("tiny-llama")).runner
    dense = build_engine(settings.engine_config("tiny-llama")).runner
    layers = [m for m in fp8.model.modules() if isinstance(getattr(m, "method", None),
                                                           Fp8LinearMethod)]
    cfg = model_config("tiny-llama")
    assert len(layers) == 4 * cfg.num_layers
    body = StepCost.of(cfg, 4).body_params
    assert sum(m.weight.numel() for m in layers) == body
    scales = sum(m.weight_scale.numel() for m in layers)
    # fp32 on the CPU: 4 bytes per weight become 1, plus an fp32 scale per output channel
    assert dense.memory_bytes - fp8.memory_bytes == 3 * body - 4 * scales
    assert StepCost.of(cfg, 4).weight_bytes - StepCost.of(cfg, 4, 1).weight_bytes == 3 * body
