"""The tensor-parallel tests' models: tiny random checkpoints whose heads split 2 and 4 ways."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "server"))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tp_qwen2(tmp_path_factory):
    """Qwen2 (q/k/v biases, tied embeddings) with one kv head: fewer kv heads than ranks."""
    return str(tiny.save_model(tmp_path_factory.mktemp("tp-qwen2"), "qwen2",
                               num_key_value_heads=1, tie_word_embeddings=True))
