#!/bin/bash
# Builds .whl/ (git-ignored): the wheels the device scripts (gpu_common.sh) install on the GPU
# machine, which has torch, triton and transformers but no network. Python 3.12, manylinux.
# Run from the repository root on this machine, then pass carry [".whl"] to the device call
# (64 MiB at most in all).
set -euo pipefail
mkdir -p .whl
pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d .whl \
  gguf msgpack prometheus-client redis llguidance xgrammar==0.2.9 fastapi starlette \
  pydantic pydantic-core annotated-types typing-inspection uvicorn h11 python-multipart \
  opentelemetry-api importlib-metadata zipp anyio sniffio apache-tvm-ffi annotated-doc \
  typing-extensions
du -sh .whl
