#!/bin/bash
# Device calls of 2026-12-06 (issues #12, #14): kernel tests on CUDA, the int4 and FP8 probes,
# the grammar mask probe, B2/B3/B1 quantized side by side with bf16, and b1s.
#   bash benchmarks/gpu_wave3.sh probes    # kernel tests + int4 sweep + FP8 probe (~5 min)
#   bash benchmarks/gpu_wave3.sh grammar   # mask probe + b1s + B2 FP8 profile (~5 min)
#   bash benchmarks/gpu_wave3.sh bench1    # kernel tests, int4 GEMV sweep, b1s, B2 (~6 min)
#   bash benchmarks/gpu_wave3.sh bench2    # B2 int4 again, B3 and B1 side by side (~6 min)
#   bash benchmarks/gpu_wave3.sh json      # b1s with xgrammar and llguidance, FP8 sweep, int4 rows
source "$(dirname "$0")/gpu_common.sh"
# The b1s A/B of xgrammar's work in the mask worker (default) and in the step loop (inline),
# and the structured-output tests on the card; TIMEOUT is each step's limit.
b1s_ab() {  # TIMEOUT
  step b1s_worker "$1" env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_worker"
  step b1s_inline "$1" env CORMORANT_GRAMMAR_FILL=inline CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_inline"
}
b1s_worker_again() { step b1s_worker_2 "$1" env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_worker2"; }
b2_three_b3_int4() {  # B2 bf16 / FP8 / int4, then B3 int4 (the dequant + cuBLAS path)
  step b2_bf16 60 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 60 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 60 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b3_int4 80 $B b3 --quick --no-peer --quantization int4 --out "$R/b3_int4"
}
structured_tests() { step xgr_tests "$1" python3 -m pytest -q tests/kernels/test_grammar_mask.py tests/text/test_xgrammar_process.py tests/text/test_xgrammar_json.py tests/engine/test_structured_engine.py; }
case "$1" in
probes)
  step kernel_tests 150 python3 -m pytest -q -x tests/kernels/test_int_gemm.py tests/kernels/test_fp8_gemm.py
  step int4_probe 240 python3 benchmarks/int4_probe.py --ms 1,16,256 --sweep --out "$OUT/int4_probe.json"
  step fp8_probe 150 python3 benchmarks/fp8_probe.py --ms 1,2,4,8,16,32,64,128,256,1024 --out "$OUT/fp8_probe.json"
  ;;
grammar)
  step kernel_tests 150 python3 -m pytest -q tests/kernels/test_int_gemm.py tests/kernels/test_fp8_gemm.py
  step int4_gemv 120 python3 benchmarks/int4_probe.py --ms 1 --sweep --out "$OUT/int4_gemv.json"
  step mask_probe_bounded 60 python3 benchmarks/mask_probe.py --rows 256 --steps 48 --engines ll --tokenizer "$TOK"
  step mask_probe_open 60 python3 benchmarks/mask_probe.py --rows 256 --steps 48 --engines ll --tokenizer "$TOK" --unbounded
  step b1s 200 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s"
  step b2_fp8_profile 150 $B b2 --quick --no-peer --quantization fp8 --profile --out "$R/b2_fp8p"
  step b2_int4 100 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  ;;
bench1)  # ~6 min
  step kernel_tests 150 python3 -m pytest -q tests/kernels/test_int_gemm.py tests/kernels/test_fp8_gemm.py
  step int4_gemv 120 python3 benchmarks/int4_probe.py --ms 1 --sweep --out "$OUT/int4_gemv.json"
  step b1s 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s"
  step b2_bf16 100 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 100 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 100 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  ;;
bench2)  # ~7 min
  step b1s 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s"
  step b2_int4 100 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b3_bf16 120 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 120 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step b1_bf16kv 60 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv 60 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv"
  ;;
dequant)  # int4 at many rows: the tile kernel against dequantize + cuBLAS (~1.5 min)
  step int4_rows 150 python3 benchmarks/int4_probe.py --ms 256,1024,4096
  ;;
json)  # xgrammar for JSON against llguidance, same card; the FP8 GEMV sweep; int4 rows (~7 min)
  step xgr_tests 120 python3 -m pytest -q tests/text/test_xgrammar_json.py tests/text/test_grammar.py
  step mask_probe_bounded 90 python3 benchmarks/mask_probe.py --rows 256 --steps 48 --tokenizer "$TOK"
  step mask_probe_open 90 python3 benchmarks/mask_probe.py --rows 256 --steps 48 --tokenizer "$TOK" --unbounded
  step b1s_xgrammar 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_xgr"
  step b1s_llguidance 150 env CORMORANT_JSON_GRAMMAR=llguidance CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_llg"
  step fp8_sweep 200 python3 benchmarks/fp8_probe.py --ms 1 --sweep --out "$OUT/fp8_sweep.json"
  step int4_rows 150 python3 benchmarks/int4_probe.py --ms 64,128,256,1024,4096
  ;;
xgr)  # xgrammar's fill threads, b1s on both engines (~4 min)
  step mask_threads 120 python3 benchmarks/mask_probe.py --thread-sweep --tokenizer "$TOK"
  step b1s_xgrammar 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_xgr"
  step b1s_xgrammar_2 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_xgr2"
  step b1s_llguidance 150 env CORMORANT_JSON_GRAMMAR=llguidance CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_llg"
  ;;
prof)  # b1s with the host profile; B2 bf16 / FP8 after the FP8 GEMV configs (~5 min)
  step b1s_profile 200 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --profile --out "$R/b1s_prof"
  step b2_bf16 100 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 100 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  ;;
b1s)  # b1s alone (~1 min)
  step b1s 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s"
  ;;
s1json)  # xgrammar's advances and fill in the mask worker against the step loop, same card (~5 min)
  structured_tests 100
  b1s_ab 150
  b1s_worker_again 150
  ;;
s4)  # the b1s A/B alone, worker then inline (~3 min)
  b1s_ab 120
  ;;
s3)  # the b1s A/B first (worker / inline / worker), then the tests on the card and B2 (fits ~8 min; a cut loses the tail)
  b1s_ab 130
  b1s_worker_again 130
  structured_tests 60
  step b2_bf16 50 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 50 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  ;;
s7)  # the card's structured tests; b1s three ways: the grammar process (default on a GPU), split in-process, job in-process (the old default); the process run profiled (~8 min)
  structured_tests 90
  step b1s_process 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_process"
  step b1s_split 130 env CORMORANT_GRAMMAR_PROCESS=0 CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_split"
  step b1s_job 130 env CORMORANT_GRAMMAR_PROCESS=0 CORMORANT_GRAMMAR_FILL=job CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s_job"
  step b1s_process_profile 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --profile --out "$R/b1s_process_prof"
  ;;
q12)  # issue #12 side by side on one card: B2 bf16 / FP8 (swept GEMV settings) / int4, B1 bf16 / FP8 KV, B3 bf16 / FP8 (~8 min; B3 last)
  step b2_bf16 60 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 60 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 60 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b1_bf16kv 60 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv 60 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv"
  step b3_bf16 110 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 110 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  ;;
s6)  # the b1s A/B and the tests on the card only (~5 min)
  b1s_ab 130
  structured_tests 80
  ;;
s5)  # the b1s A/B first, then the tests on the card, B2 three ways and B3 int4 (~8 min; a cut loses the tail)
  b1s_ab 130
  structured_tests 80
  b2_three_b3_int4
  ;;
s2)  # s1json, then B2 three ways and B3 int4 (~8 min; B3 last, so a cut loses only it)
  structured_tests 100
  b1s_ab 130
  b1s_worker_again 130
  b2_three_b3_int4
  ;;
s1)  # session of 12-06 afternoon: CUDA kernel tests, b1s with its host profile, B2/B3 bf16 FP8 int4 (~9 min)
  step kernel_tests 120 python3 -m pytest -q -x tests/kernels/test_int_gemm.py tests/kernels/test_fp8_gemm.py
  step b1s_profile 200 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --profile --out "$R/b1s_prof"
  step b2_bf16 90 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 90 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 90 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b3_bf16 100 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_int4 100 $B b3 --quick --no-peer --quantization int4 --out "$R/b3_int4"
  ;;
final)  # every figure of the note on one card, ~7 min
  step b1s 150 env CORMORANT_BENCH_TOKENIZER="$TOK" $B b1s --quick --no-peer --out "$R/b1s"
  step b2_bf16 100 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 100 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 100 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b3_bf16 120 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 120 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step b1_bf16kv 60 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv 60 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv"
  step b2_fp8_profile 120 $B b2 --quick --no-peer --quantization fp8 --profile --out "$R/b2_fp8p"
  ;;
esac
for f in "$R"/*/*_profile.txt; do [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")")_$(basename "$f")"; done
for f in "$R"/*/results.json; do [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")").json"; done
# A call brings back at most 8 files: the logs, profiles and JSON travel as one archive.
tar czf /tmp/all.tgz -C "$OUT" . -C "$R" . && rm -f "$OUT"/* && mv /tmp/all.tgz "$OUT/all.tgz"
exit 0
