#!/usr/bin/env bash
# One device call: kernel checks, engine checks (parity + decode speed). Writes logs to $OUT.
# Run from the repository root on the lent GPU machine, with .whl carried (see benchmarks/README.md).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/card.txt"
git log -1 --format='%H %cd' 2>/dev/null | tee -a "$OUT/card.txt"
timeout "${KERNEL_S:-200}" python3 benchmarks/gpu_kernel_check.py --budget "${KERNEL_BUDGET:-160}" \
    > "$OUT/kernel.log" 2>&1; echo "kernel check exit $?"
tail -45 "$OUT/kernel.log"
timeout "${ENGINE_S:-330}" python3 benchmarks/gpu_engine_check.py --budget "${ENGINE_BUDGET:-300}" \
    > "$OUT/engine.log" 2>&1; echo "engine check exit $?"
tail -60 "$OUT/engine.log"
