"""Quantized checkpoints shard with their scales: TP = 2 against TP = 1 on the CPU (gloo),
token-identical greedy output and logprobs within 1e-5, for the layouts that split along
different dims (AWQ packs along the output, GPTQ along the input with packed zero points,
FP8 compressed-tensors carries a scale per output channel). Online quantization
(`--quantization fp8|int4` of dense weights) is not compared: each rank computes its scales
from its own shard of a row-parallel layer, which is a different (equally valid) model."""
from __future__ import annotations

import os
import sys

import pytest

from tp_helpers import assert_same_generation, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "models"))

import tiny  # noqa: E402
from fp8_checkpoints import write_compressed_tensors  # noqa: E402
from int_checkpoints import write_int_checkpoint  # noqa: E402

WRITERS = {
    "awq-g32": lambda src, dst: write_int_checkpoint(src, dst, "awq", group=32)[0],
    "gptq-int4-g32-asym": lambda src, dst: write_int_checkpoint(
        src, dst, "gptq", bits=4, group=32, sym=False, desc_act=False)[0],
    "fp8-compressed-tensors-channel": lambda src, dst: (
        write_compressed_tensors(src, dst, "channel"), dst)[1],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny Qwen3 whose row-parallel inputs split into whole groups of 32 at TP = 2."""
    return tiny.save_model(tmp_path_factory.mktemp("tpq-src"), "qwen3", hidden_size=128,
                           intermediate_size=256)


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_quantized_checkpoint_tp2_matches_tp1(source, tmp_path, fmt):
    model = str(WRITERS[fmt](source, tmp_path / fmt))
    reference = run(model, num_kv_blocks=64)[0]
    outputs, _ = run(model, num_kv_blocks=64, tensor_parallel_size=2)
    assert_same_generation(reference, outputs)
