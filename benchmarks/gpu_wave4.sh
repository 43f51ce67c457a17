#!/bin/bash
# Device calls of 2026-12-07 (issue #12): codes made floats by integer ops (int4 GEMV, FP8
# words GEMV, FP8 KV cache in paged attention) and the int4 GEMV's fused prologues. The e4m3
# path (CORMORANT_E4M3_CVT=bits) and the W8A16 GEMM's rows (CORMORANT_FP8_GEMM_ROWS=64) are
# opt-in until measured: the runs below switch them on where they say so.
#   bash benchmarks/gpu_wave4.sh full    # tests, B2, B1 both ways, B3 both ways, probes, sweep (~9 min)
#   bash benchmarks/gpu_wave4.sh short   # the new kernels' tests, B2 three ways, B1 (~4 min)
source "$(dirname "$0")/gpu_common.sh"
BITS="env CORMORANT_E4M3_CVT=bits"
tests() {  # TIMEOUT FILES...
  local t=$1; shift
  step cuda_tests "$t" python3 -m pytest -q -x "$@"
}
b2_three() {  # TIMEOUT
  step b2_bf16 "$1" $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 "$1" $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 "$1" $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
}
b1_pair() {  # TIMEOUT: the bf16 cache, the FP8 cache read through kernels.e4m3
  step b1_bf16kv "$1" $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv_bits "$1" $BITS $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_bits"
}
case "$1" in
full)
  tests 120 tests/kernels/test_e4m3.py tests/kernels/test_fp8_kv_kernels.py tests/kernels/test_fp8_gemm.py tests/kernels/test_int_gemm.py
  b2_three 60
  b1_pair 60
  step b3_bf16 100 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 100 $BITS CORMORANT_FP8_GEMM_ROWS=64 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step b1_fp8kv_cast 60 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_cast"
  step probe 100 python3 benchmarks/cvt_probe.py --out "$OUT/cvt_probe.json"
  step b3_fp8_scaled_mm 100 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8_smm"
  step fp8_rows 100 $BITS python3 benchmarks/fp8_probe.py --ms 2,8,16,32,64,128,256 --out "$OUT/fp8_rows.json"
  step sweep 200 python3 benchmarks/cvt_probe.py --sweep --out "$OUT/cvt_sweep.json"
  ;;
short)
  tests 60 tests/kernels/test_e4m3.py tests/kernels/test_fp8_gemm.py
  b2_three 45
  b1_pair 45
  ;;
*) echo "unknown mode $1"; exit 2 ;;
esac
