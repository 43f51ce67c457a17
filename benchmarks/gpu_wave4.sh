#!/bin/bash
# Device calls of 2026-12-07 (issue #12): codes made floats by integer ops (int4 GEMV, FP8
# words GEMV, FP8 KV cache in paged attention) and the int4 GEMV's fused prologues. The e4m3
# path (CORMORANT_E4M3_CVT=bits) and the W8A16 GEMM's rows (CORMORANT_FP8_GEMM_ROWS=64) are
# opt-in until measured: the runs below switch them on where they say so.
#   bash benchmarks/gpu_wave4.sh c5   # the shortest: new kernels' tests, B2 three ways, B1 (~4 min)
#   bash benchmarks/gpu_wave4.sh c4   # c3 without the A/B runs and sweeps (~6 min)
#   bash benchmarks/gpu_wave4.sh c3   # c1 and c2's essentials in one call (~9 min)
#   bash benchmarks/gpu_wave4.sh c1   # CUDA tests, B2 three ways, B1 bf16 / FP8 KV both ways, probe (~8 min)
#   bash benchmarks/gpu_wave4.sh c2   # FP8 rows probe, B3 bf16 / FP8 (W8A16 to 64 rows) / FP8 (_scaled_mm), sweeps (~8 min)
source "$(dirname "$0")/gpu_common.sh"
case "$1" in
c5)  # a short call: the new kernels' card tests, B2 int4 / FP8 / bf16, B1 FP8 / bf16 cache
  step cuda_tests 60 python3 -m pytest -q -x tests/kernels/test_e4m3.py tests/kernels/test_fp8_gemm.py
  step b2_int4 45 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b2_fp8 45 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_bf16 45 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b1_fp8kv_bits 45 env CORMORANT_E4M3_CVT=bits $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_bits"
  step b1_bf16kv 45 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  ;;
c4)  # the least device time: the card's tests, B2 three ways, B1 both caches, B3 bf16 / FP8, probe
  step cuda_tests 90 python3 -m pytest -q -x tests/kernels/test_e4m3.py tests/kernels/test_fp8_kv_kernels.py tests/kernels/test_fp8_gemm.py tests/kernels/test_int_gemm.py
  step b2_bf16 50 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 50 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 50 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b1_bf16kv 50 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv_bits 50 env CORMORANT_E4M3_CVT=bits $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_bits"
  step b3_bf16 80 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 80 env CORMORANT_E4M3_CVT=bits CORMORANT_FP8_GEMM_ROWS=64 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step probe 80 python3 benchmarks/cvt_probe.py --out "$OUT/cvt_probe.json"
  ;;
c3)  # one call for all of it (the device time left is one call): tests, B2, B1, B3, probe
  step cuda_tests 120 python3 -m pytest -q -x tests/kernels/test_e4m3.py tests/kernels/test_fp8_kv_kernels.py tests/kernels/test_fp8_gemm.py tests/kernels/test_int_gemm.py
  step b2_bf16 60 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 60 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 60 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b1_bf16kv 60 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv_bits 60 env CORMORANT_E4M3_CVT=bits $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_bits"
  step b3_bf16 100 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 100 env CORMORANT_E4M3_CVT=bits CORMORANT_FP8_GEMM_ROWS=64 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step b1_fp8kv_hw 60 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_hw"
  step probe 100 python3 benchmarks/cvt_probe.py --out "$OUT/cvt_probe.json"
  step b3_fp8_scaled_mm 100 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8_smm"
  step fp8_rows 100 env CORMORANT_E4M3_CVT=bits python3 benchmarks/fp8_probe.py --ms 2,8,16,32,64,128,256 --out "$OUT/fp8_rows.json"
  step sweep 200 python3 benchmarks/cvt_probe.py --sweep --out "$OUT/cvt_sweep.json"
  ;;
c1)
  step cuda_tests 150 python3 -m pytest -q -x tests/kernels/test_e4m3.py tests/kernels/test_fp8_kv_kernels.py tests/kernels/test_int_gemm.py tests/kernels/test_fp8_gemm.py
  step b2_bf16 60 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 60 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 60 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b1_bf16kv 60 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv_bits 60 env CORMORANT_E4M3_CVT=bits $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_bits"
  step b1_fp8kv_hw 60 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_hw"
  step probe 200 python3 benchmarks/cvt_probe.py --out "$OUT/cvt_probe.json"
  ;;
c2)
  step fp8_rows 120 env CORMORANT_E4M3_CVT=bits python3 benchmarks/fp8_probe.py --ms 2,8,16,32,64,128,256 --out "$OUT/fp8_rows.json"
  step b3_bf16 110 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 110 env CORMORANT_E4M3_CVT=bits CORMORANT_FP8_GEMM_ROWS=64 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step b3_fp8_scaled_mm 110 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8_smm"
  step sweep 200 python3 benchmarks/cvt_probe.py --sweep --out "$OUT/cvt_sweep.json"
  ;;
*) echo "unknown mode $1"; exit 2 ;;
esac
