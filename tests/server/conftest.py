"""Fixtures for the server tests: real engines (tiny random Llama, real SmolLM2) behind the
real app, driven over HTTP (helpers in server_helpers.py).

One tiny engine is shared by most servers (several apps may front the same engine object);
tests that need different engine limits build their own. The drain tests run the server as a
subprocess instead, because they send it SIGTERM.
"""
from __future__ import annotations

import openai
import pytest

from cormorant.config import EngineConfig, SchedulerConfig
from server_helpers import ServerThread, start_engine, tiny_engine_config


@pytest.fixture(scope="session")
def tiny_llm(tiny_llama):
    llm = start_engine(tiny_engine_config(tiny_llama))
    yield llm
    llm.shutdown()


@pytest.fixture(scope="session")
def tiny_server(tiny_llm):
    server = ServerThread(tiny_llm).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(tiny_server) -> openai.OpenAI:
    return tiny_server.client()


@pytest.fixture(scope="session")
def smollm2_server(smollm2_path):
    llm = start_engine(EngineConfig(model=smollm2_path, seed=0,
                                    scheduler=SchedulerConfig(max_model_len=2048)))
    server = ServerThread(llm).start(timeout=300)
    yield server
    server.stop()
    llm.shutdown()


