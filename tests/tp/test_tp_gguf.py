"""A GGUF file (llama.cpp's names and q/k row permutation, dequantized) shards like a
safetensors checkpoint: the engine core over TP = 2 workers generates what it generates over
one ModelRunner, token for token, logprobs within 1e-5. (The tiny GGUF has no tokenizer, so
the engine core is driven directly, without the text layers.)"""
from __future__ import annotations

import os
import sys

import torch

from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.engine.core import EngineCore
from cormorant.engine.types import EngineRequest
from cormorant.layers.attention import TorchAttention
from cormorant.models.loader import load_model, load_model_config
from cormorant.runner.model_runner import ModelRunner
from cormorant.runner.tp_executor import TensorParallelExecutor
from cormorant.sampling_params import SamplingParams

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "models"))
from gguf_test_utils import write_gguf  # noqa: E402
from model_test_utils import make_hf_model  # noqa: E402

PROMPTS = [[5, 17, 99, 3, 42, 8, 9], [7, 1, 2, 3, 4, 5], [60, 61]]
EOS = (2,)


def _generate(config: EngineConfig, runner) -> dict[str, list]:
    """req id -> [(token id, its logprob)] of 16 greedy tokens per prompt, batched."""
    core = EngineCore(config, runner, EOS)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=0)
    for i, prompt in enumerate(PROMPTS):
        core.add_request(EngineRequest(str(i), prompt, params))
    out: dict[str, list] = {}
    while core.has_unfinished_requests():
        for eo in core.step():
            out.setdefault(eo.req_id, []).extend(
                (t, lp[0]) for t, lp in zip(eo.new_token_ids, eo.new_logprobs))
    return out


def test_gguf_llama_shards_like_one_device(tmp_path):
    path = str(tmp_path / "tiny-llama.gguf")
    write_gguf(make_hf_model("llama-tied"), path, "llama")
    config = EngineConfig(model=path, seed=0, tensor_parallel_size=2,
                          cache=CacheConfig(num_blocks=32),
                          scheduler=SchedulerConfig(max_model_len=128,
                                                    max_num_batched_tokens=512))
    model_config = load_model_config(path)
    model, _ = load_model(path, torch.float32, "cpu", TorchAttention())
    cpu = torch.device("cpu")
    reference = _generate(config, ModelRunner(config, model_config, model, cpu, torch.float32,
                                              EOS))
    executor = TensorParallelExecutor(config, model_config, EOS, cpu)
    try:
        sharded = _generate(config, executor)
    finally:
        executor.close()
    assert sorted(sharded) == sorted(reference) == ["0", "1", "2"]
    for req_id, ref in reference.items():
        assert [t for t, _ in sharded[req_id]] == [t for t, _ in ref]
        for (_, lp), (_, ref_lp) in zip(sharded[req_id], ref):
            assert abs(lp - ref_lp) <= 1e-5
