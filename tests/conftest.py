"""Session-wide fixtures: tiny random models of each family and the real SmolLM2 GGUF."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return str(tiny.save_model(tmp_path_factory.mktemp("tiny-llama"), "llama"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    return str(tiny.save_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2",
                               tie_word_embeddings=True))


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    return str(tiny.save_model(tmp_path_factory.mktemp("tiny-qwen3"), "qwen3"))


@pytest.fixture(scope="session")
def smollm2_path():
    from cormorant.frontend.default_model import default_model_path

    return default_model_path()
