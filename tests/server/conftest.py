"""Fixtures for the server tests: real engines (tiny random Llama, real SmolLM2) behind the
real app, driven over HTTP (helpers in server_helpers.py).

One tiny engine is shared by most servers (several apps may front the same engine object);
tests that need different engine limits build their own. The drain tests run the server as a
subprocess instead, because they send it SIGTERM.
"""
from __future__ import annotations

import openai
import pytest

from server_helpers import running_model_server, running_server, tiny_engine_fixture


tiny_llm = tiny_engine_fixture("tiny_llm", "session")


@pytest.fixture(scope="session")
def tiny_server(tiny_llm):
    with running_server(tiny_llm) as server:
        yield server


@pytest.fixture(scope="session")
def client(tiny_server) -> openai.OpenAI:
    return tiny_server.client()


@pytest.fixture(scope="session")
def smollm2_server(smollm2_path):
    with running_model_server(smollm2_path, max_model_len=2048) as server:
        yield server


@pytest.fixture(scope="session")
def multi_keys(tmp_path_factory):
    from multi_model import Keys

    return Keys(tmp_path_factory.mktemp("multi-keys") / "keys.json")


@pytest.fixture(scope="session")
def multi_server(tmp_path_factory, tiny_llama, tiny_qwen3, multi_keys):
    """SmolLM2, tiny models and MiniLM in one server (tests/server/multi_model.py)."""
    from models.test_bert import minilm_dir
    from multi_model import make_root, start_multi_server

    root = make_root(tmp_path_factory.mktemp("model-root"), tiny_llama, tiny_qwen3,
                     minilm_dir())
    server = start_multi_server(root, multi_keys)
    yield server
    server.stop()
    server.app.state.cormorant.pool.shutdown_now()
