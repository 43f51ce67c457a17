#!/bin/bash
# One device call for the wave-2 figures: issue #12 (B2 bf16 / FP8 / int4 weights, B1 with an
# FP8 KV cache, B3 FP8, top-1 agreement of FP8 and int4 with bf16), issue #14 (b1s).
#   bash benchmarks/gpu_wave2.sh            # on the device, $OUT set; ~7-9 min
#   TINY=1 OUT=/tmp/w2 bash benchmarks/gpu_wave2.sh   # CPU smoke of every command
set -o pipefail
export PYTHONUNBUFFERED=1
B="python3 -m cormorant.bench.cli"
SCALE="--quick"; Q=""
if [ -n "$TINY" ]; then SCALE="--tiny --device cpu"; Q="--tiny"; fi
step() {  # name timeout command...
  local name=$1 t=$2; shift 2
  echo "== $name $(date -u +%T)"
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? $(date -u +%T)"; grep -E "ms/tok|tok/s|of floor|\": [0-9]|Error|error" "$OUT/$name.log" | tail -8
}
step b2_bf16 100 $B b2 $SCALE --no-peer --out "$OUT/b2_bf16"
step b2_fp8 100 $B b2 $SCALE --no-peer --quantization fp8 --out "$OUT/b2_fp8"
step b2_int4 100 $B b2 $SCALE --no-peer --quantization int4 --out "$OUT/b2_int4"
step b1_bf16kv 60 $B b1 $SCALE --no-peer --out "$OUT/b1_bf16kv"
step b1_fp8kv 60 $B b1 $SCALE --no-peer --kv-cache-dtype fp8 --out "$OUT/b1_fp8kv"
step quality 90 python3 benchmarks/quant_quality.py --formats fp8,int4 $Q --out "$OUT/quality.json"
step b1s 60 env CORMORANT_BENCH_TOKENIZER="$PWD/.whl/smollm2-tok" $B b1s $SCALE --no-peer --out "$OUT/b1s"
step b3_bf16 110 $B b3 $SCALE --no-peer --out "$OUT/b3_bf16"
step b3_fp8 110 $B b3 $SCALE --no-peer --quantization fp8 --out "$OUT/b3_fp8"
