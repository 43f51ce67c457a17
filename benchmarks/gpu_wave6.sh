#!/bin/bash
# Device calls of 2026-12-07, third session (issue #12): the GEMVs' first K step loaded before
# the PDL wait (CORMORANT_PDL_PRELOAD), and what the second session left unrun.
#   bash benchmarks/gpu_wave6.sh preload  # ran 19:43 at e022ede (PRELOAD then existed; reverted):
#                                           card tests, int4 GEMV forms per projection, B2
#                                           FP8 / int4 with PRELOAD on and off, tokens (~5 min)
#   bash benchmarks/gpu_wave6.sh mma64    # int4_mma at 17-64 rows: card tests, per projection
#                                           with its sweep, B3 int4 routed up to 64 rows (~6 min;
#                                           ran 19:48 at e022ede)
#   bash benchmarks/gpu_wave6.sh mma64b   # at the new defaults (up to 64 rows, config_for's
#                                           17-64 row settings): card tests, 32 / 64 rows, B3
#                                           int4 (~3 min)
source "$(dirname "$0")/gpu_common.sh"
case "$1" in
preload)
  step preload_tests 150 python3 -m pytest -q -rf tests/kernels/test_int_gemm.py \
    tests/kernels/test_fp8_gemm.py -k "packed_gemv_on_the_card or gemv"
  step preload_probe 100 python3 benchmarks/int4_probe.py --ms 1 --packed \
    --out "$OUT/preload_probe.json"
  step b2_int4 60 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b2_int4_preload 60 env CORMORANT_PDL_PRELOAD=1 $B b2 --quick --no-peer \
    --quantization int4 --out "$R/b2_int4_preload"
  step b2_fp8 60 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_fp8_preload 60 env CORMORANT_PDL_PRELOAD=1 $B b2 --quick --no-peer \
    --quantization fp8 --out "$R/b2_fp8_preload"
  step preload_tokens 120 env PDL_CHECK_SWITCH=CORMORANT_PDL_PRELOAD \
    PDL_CHECK_QUANTS=int4,fp8 python3 benchmarks/pdl_check.py
  ;;
mma64)  # wave 5's mode of the same name, unrun there
  bash "$(dirname "$0")/gpu_wave5.sh" mma64
  ;;
mma64b)
  step mma64b_tests 100 python3 -m pytest -q -rf tests/kernels/test_int4_mma.py
  step mma64b_probe 100 python3 benchmarks/int4_probe.py --ms 32,64 --mma \
    --out "$OUT/mma64b_probe.json"
  step b3_int4 100 $B b3 --quick --no-peer --quantization int4 --out "$R/b3_int4"
  ;;
*)
  echo "usage: $0 preload|mma64|mma64b" >&2; exit 2
  ;;
esac
