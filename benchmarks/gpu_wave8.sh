#!/bin/bash
# Device calls of 2026-12-08 (issue #12).
#   bash benchmarks/gpu_wave8.sh kvcvt   # FP8 KV decode attention: kv_fp8_probe.py over every
#                                          CORMORANT_KV_FP8_CVT form x launch sweep (register
#                                          caps included); B1 bf16 / FP8 KV at the defaults,
#                                          with f16_cast, and at the probe's two fastest FP8
#                                          settings; the attention card tests
#   bash benchmarks/gpu_wave8.sh w8a16   # the W8A16 tiles (B3's FP8 decode batches) with
#                                          OPAQUE off and on: fp8_probe --opaque at 16 and
#                                          32 rows, B3 FP8 both ways; B2 FP8 with the
#                                          GEMV's norm / SiLU prologue fused (default) and
#                                          as their own kernels; test_e4m3 (~8 min)
#   bash benchmarks/gpu_wave8.sh quality # gpu_wave7.sh's unrun `quality`: int4_quality.py (fp8,
#                                          int4 against bf16 through the decode kernels) at
#                                          4 sequences and at 1 (the GEMVs); B3 int4 (~7 min)
# gpu_wave7.sh's call as it stands (it sets itself up)
[ "$1" = quality ] && exec bash "$(dirname "$0")/gpu_wave7.sh" quality
source "$(dirname "$0")/gpu_common.sh"
case "$1" in
kvcvt)  # most telling first: what a call cut short returns still counts
  step kv_fp8_probe 300 python3 benchmarks/kv_fp8_probe.py --out "$OUT/kv_fp8_probe.json"
  grep "^fp8_pick" "$OUT/kv_fp8_probe.log"
  step b1 80 $B b1 --quick --no-peer --out "$R/b1"
  step b1_fp8kv 80 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv"
  step b1_fp8kv_f16 80 env CORMORANT_KV_FP8_CVT=f16_cast $B b1 --quick --no-peer \
    --kv-cache-dtype fp8 --out "$R/b1_f16"
  for i in 0 1; do
    pick=$(grep "^fp8_pick$i " "$OUT/kv_fp8_probe.log" | cut -d' ' -f2,3)
    if [ -n "$pick" ]; then
      echo "pick$i: $pick"
      step b1_fp8kv_pick$i 80 env $pick $B b1 --quick --no-peer --kv-cache-dtype fp8 \
        --out "$R/b1_pick$i"
    fi
  done
  step kv_tests 150 python3 -m pytest -q -rf tests/kernels/test_e4m3.py \
    tests/kernels/test_fp8_kv_kernels.py tests/kernels/test_paged_attention_kernel.py
  echo "elapsed $SECONDS s"
  ;;
w8a16)  # B2 first: the cheapest, with a target of its own
  step b2_fp8 60 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_fp8_unfused 60 env CORMORANT_FP8_GEMV_PROLOGUE=0 $B b2 --quick --no-peer \
    --quantization fp8 --out "$R/b2_fp8_unfused"
  step fp8_opaque 150 python3 benchmarks/fp8_probe.py --ms 16,32 --opaque \
    --out "$OUT/fp8_opaque.json"
  grep "^opaque" "$OUT/fp8_opaque.log" | cut -c1-400
  step b3_fp8 100 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step b3_fp8_opaque 100 env CORMORANT_FP8_GEMM_OPAQUE=1 $B b3 --quick --no-peer \
    --quantization fp8 --out "$R/b3_fp8_opaque"
  step e4m3_tests 120 python3 -m pytest -q -rf tests/kernels/test_e4m3.py
  echo "elapsed $SECONDS s"
  ;;
*)
  echo "usage: $0 kvcvt|w8a16|quality" >&2; exit 2
  ;;
esac
