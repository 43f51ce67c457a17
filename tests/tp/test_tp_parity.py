"""TP = 2 and 4 against TP = 1 on the CPU (gloo): token-identical greedy output and logprobs
within 1e-5, fp32, 4 prompts x 32 tokens batched, for Llama (kv heads split at 2 ranks,
replicated at 4), Qwen2 (biases, tied embeddings, one kv head replicated on every rank) and
Qwen3 (q/k norms, head_dim apart from hidden / heads). Llama at TP = 2 is covered, with
chunked prefill, prefix caching and preemption on, in test_tp_features.py."""
from __future__ import annotations

import pytest

from tp_helpers import assert_same_generation, run

CASES = [("tiny_llama", 4), ("tp_qwen2", 2), ("tp_qwen2", 4), ("tiny_qwen3", 2),
         ("tiny_qwen3", 4)]
_references: dict[str, list] = {}


@pytest.mark.parametrize("model_fixture,tp", CASES)
def test_greedy_matches_tp1(request, model_fixture, tp):
    model = request.getfixturevalue(model_fixture)
    if model not in _references:
        _references[model] = run(model, num_kv_blocks=64)[0]
    outputs, stats = run(model, num_kv_blocks=64, tensor_parallel_size=tp)
    assert_same_generation(_references[model], outputs)
    assert stats.num_total_blocks == 64
