#!/bin/bash
# Device calls of 2026-12-07, second session (issue #12). `first` measures everything that
# decides a default: the card's tests of the new kernels, B2 bf16/FP8/int4, B1 with the bf16
# and the FP8 KV cache (read through kernels.e4m3), B3 bf16 against FP8 both ways (that
# day's defaults, _scaled_mm from two rows on; and the Triton paths: W8A16 tiles up to 64
# rows, W8A8 tiles up to 512). `second` attributes it per projection: fp8_probe with the W8A8
# sweep, cvt_probe with its sweep, B1 through Triton's own e4m3 casts, the int kernels' tests.
#   bash benchmarks/gpu_wave5.sh first    # ran 2026-12-07 04:24 on an H100 (6 min; RESULTS.md)
#   bash benchmarks/gpu_wave5.sh core     # its first form ran 2026-12-07 07:50 on an H100
#                                           (results/2026-12-07-h100-wave6/calls.md)
#   bash benchmarks/gpu_wave5.sh diag     # B3, W8A8 tests, B1 FP8 KV, int4 pdl_check (~7 min)
#   bash benchmarks/gpu_wave5.sh prof     # B3 profiles, FP8 paths at 1-128 rows (~5 min)
#   bash benchmarks/gpu_wave5.sh w8a16    # W8A16 tile sweep, B3 FP8 profiles (~6 min)
#   bash benchmarks/gpu_wave5.sh b3       # B3 bf16 / FP8, FP8 card tests (~5 min)
#   bash benchmarks/gpu_wave5.sh b2prof   # B2 FP8 / int4 profiles, PDL off (~2 min)
#   bash benchmarks/gpu_wave5.sh final    # B2 x3 and B3 x2 at the defaults (~4 min)
#   bash benchmarks/gpu_wave5.sh fold     # norm / SiLU folded into FP8 quantization (~4 min)
#   bash benchmarks/gpu_wave5.sh persm    # W8A16 K split per SM, 16/32 rows, B3 (~3 min)
#   bash benchmarks/gpu_wave5.sh a8       # W8A8 tests and tile sweep at 16/32/128 rows, attention sweep (~9 min)
#   bash benchmarks/gpu_wave5.sh fastacc  # FP8 fast accumulation: time and error (~2 min)
#   bash benchmarks/gpu_wave5.sh mma      # int4 on tensor cores (kernels.int4_mma): card tests,
#                                           per projection at 1 and 16 rows with its sweep, B2
#                                           int4 with it and without (~7 min)
#   bash benchmarks/gpu_wave5.sh mma2     # int4_mma at its tuned defaults: card tests, 1-16
#                                           rows, B3 int4 with it and without (~5 min)
#   bash benchmarks/gpu_wave5.sh packed   # the int4 GEMV's packed-bf16 sums and attention's
#                                           in-launch segment merge: card tests, per projection,
#                                           B2 int4 with the sums and without, FP8, bf16 (~9 min)
#   bash benchmarks/gpu_wave5.sh psweep   # its launch settings swept, B2 bf16 / int4 (~7 min)
#   bash benchmarks/gpu_wave5.sh pfinal   # at its tuned split: card tests, B2 x4 (~6 min)
#   bash benchmarks/gpu_wave5.sh mma64    # int4_mma at 17-64 rows: tests, sweep, B3 (not run yet)
#   bash benchmarks/gpu_wave5.sh next     # ACC2D and int GEMV sweeps (~6 min)
#   bash benchmarks/gpu_wave5.sh second   # ~8 min
source "$(dirname "$0")/gpu_common.sh"
TRITON_PATHS="env CORMORANT_E4M3_CVT=bits CORMORANT_FP8_GEMM_ROWS=64 CORMORANT_FP8_A8_ROWS=512"
case "$1" in
first)
  step cuda_tests 100 python3 -m pytest -q tests/kernels/test_e4m3.py tests/kernels/test_fp8_gemm.py
  step b2_bf16 50 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 50 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 50 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b3_bf16 80 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8_triton 80 $TRITON_PATHS $B b3 --quick --no-peer --quantization fp8 \
    --out "$R/b3_fp8_triton"
  step b3_fp8_default 80 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8_default"
  step b1_bf16kv 50 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv_bits 50 env CORMORANT_E4M3_CVT=bits $B b1 --quick --no-peer --kv-cache-dtype fp8 \
    --out "$R/b1_fp8kv_bits"
  step fp8_rows_short 70 env CORMORANT_E4M3_CVT=bits python3 benchmarks/fp8_probe.py \
    --ms 32,128,256 --out "$OUT/fp8_rows_short.json"
  ;;
core)  # the B2 A/B of 07:50 at today's defaults (MAGIC and PDL on; each switched off alone),
  # MAGIC's card test and the PDL token check (~4 min)
  step b2_bf16 40 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 40 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_fp8_no_pdl 40 env CORMORANT_PDL=0 $B b2 --quick --no-peer --quantization fp8 \
    --out "$R/b2_fp8_no_pdl"
  step b2_int4 40 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b2_int4_no_pdl 40 env CORMORANT_PDL=0 $B b2 --quick --no-peer --quantization int4 \
    --out "$R/b2_int4_no_pdl"
  step b2_int4_no_magic 40 env CORMORANT_INT_MAGIC=0 $B b2 --quick --no-peer \
    --quantization int4 --out "$R/b2_int4_no_magic"
  step magic_tests 40 python3 -m pytest -q -rf tests/kernels/test_int_gemm.py -k "bit_trick"
  step pdl_check 150 python3 benchmarks/pdl_check.py
  ;;
diag)  # what the 07:50 call left: B3 bf16 and FP8 (W8A16 up to 64 rows alone), the fixed
  # W8A8 tests, B1 with the FP8 KV cache beside bf16 (~6 min)
  step b3_bf16 70 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 70 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step a8_tests 40 python3 -m pytest -q -rf tests/kernels/test_fp8_gemm.py -k "scaled_gemm or routes"
  grep -E "^FAILED|^E  " "$OUT/a8_tests.log" | sort | uniq -c | sort -rn | head -8
  step b1_bf16kv 50 $B b1 --quick --no-peer --out "$R/b1_bf16kv"
  step b1_fp8kv 50 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv"
  step pdl_int4 80 env PDL_CHECK_QUANTS=int4 python3 benchmarks/pdl_check.py
  ;;
prof)  # where B3's FP8 time goes: B3 bf16 and FP8 with --profile (OUT/*_profile.txt), and the
  # FP8 paths per projection at B3's decode batches (~5 min)
  step b3_bf16_prof 120 $B b3 --quick --no-peer --profile --out "$OUT/b3_bf16"
  step b3_fp8_prof 120 $B b3 --quick --no-peer --quantization fp8 --profile --out "$OUT/b3_fp8"
  step fp8_rows 150 python3 benchmarks/fp8_probe.py --ms 1,8,16,32,64,128 --out "$OUT/fp8_rows.json"
  ;;
w8a16)  # the W8A16 GEMM's tiles (plain and SWAP) at 8-128 rows; B3 FP8 profiled with PDL off
  # (a PDL kernel's profiled time starts at its early launch); only the profiles come back
  step w8a16_sweep 300 python3 benchmarks/fp8_probe.py --ms 16 --sweep-w8a16 \
    --out "$OUT/w8a16_sweep.json"
  grep -c WRONG "$OUT/w8a16_sweep.log"
  step b3_fp8_nopdl_prof 120 env CORMORANT_PDL=0 $B b3 --quick --no-peer --quantization fp8 \
    --profile --out "$OUT/b3_fp8_nopdl"
  rm -f "$OUT"/b3_fp8_nopdl/*.json "$OUT"/b3_fp8_nopdl/b3-2048_128_profile.txt
  ;;
b3)  # B3 bf16 and FP8 side by side after the one-pass quantize_rows and the W8A16 cap of 32
  # rows; the FP8 kernels' card tests (SWAP tiles, quantize_rows bit for bit, W8A8) (~5 min)
  step fp8_tests 150 python3 -m pytest -q -rf tests/kernels/test_fp8_gemm.py
  step fp8_rows 90 python3 benchmarks/fp8_probe.py --ms 32,64,128 --out "$OUT/fp8_rows.json"
  step b3_bf16 70 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 70 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  ;;
b2prof)  # where B2's FP8 and int4 decode step goes, PDL off (~2 min)
  step b2_fp8_prof 60 env CORMORANT_PDL=0 $B b2 --quick --no-peer --quantization fp8 --profile \
    --out "$OUT/b2_fp8"
  step b2_int4_prof 60 env CORMORANT_PDL=0 $B b2 --quick --no-peer --quantization int4 \
    --profile --out "$OUT/b2_int4"
  rm -f "$OUT"/b2_*/*.json
  ;;
final)  # the session's defaults: B2 bf16 / FP8 / int4 and B3 bf16 / FP8 side by side (~4 min).
  # Its 09:34 run also tried a two-step greedy argmax (sampler.greedy_ids, then reverted: on
  # the H100 it took 11.5 us against torch.argmax's 26.9 for 128,256 logits, but 14.4 against
  # 9.4 for 151,936); results/2026-12-07-h100-wave7/final has those logs.
  step b2_bf16 40 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 40 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4 40 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b3_bf16 70 $B b3 --quick --no-peer --out "$R/b3_bf16"
  step b3_fp8 70 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  ;;
fold)  # the norm / SiLU folded into the activations' quantization of _scaled_mm rows: card
  # tests (codes bit for bit), tokens with it on and off (every multi-row step on _scaled_mm),
  # B3 FP8 with it on and off (~4 min)
  step fold_tests 60 python3 -m pytest -q -rf tests/kernels/test_fp8_gemm.py -k "quantize"
  step fold_tokens 120 env PDL_CHECK_SWITCH=CORMORANT_FP8_QUANT_PROLOGUE PDL_CHECK_QUANTS=fp8 \
    CORMORANT_FP8_GEMM_ROWS=1 python3 benchmarks/pdl_check.py
  step b3_fp8 70 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  step b3_fp8_unfolded 70 env CORMORANT_FP8_QUANT_PROLOGUE=0 $B b3 --quick --no-peer \
    --quantization fp8 --out "$R/b3_fp8_unfolded"
  ;;
persm)  # the few-row W8A16 GEMM's K split: about 2 (default), 4 and 6 programs per SM, per
  # projection at 16 and 32 rows, and B3 FP8 at 2 and 4 (~3 min)
  for p in 2 4 6; do
    step fp8_rows_persm$p 60 env CORMORANT_FP8_GEMM_PER_SM=$p python3 benchmarks/fp8_probe.py \
      --ms 16,32 --out "$OUT/fp8_rows_persm$p.json"
  done
  step b3_fp8_persm4 70 env CORMORANT_FP8_GEMM_PER_SM=4 $B b3 --quick --no-peer \
    --quantization fp8 --out "$R/b3_fp8_persm4"
  step b3_fp8 70 $B b3 --quick --no-peer --quantization fp8 --out "$R/b3_fp8"
  ;;
a8)  # the W8A8 GEMM (fp8_scaled_gemm) again, now that it sums each K step in fp32: its card
  # tests (transposed tiles too), and its tiles swept at 16, 32 and 128 rows against _scaled_mm
  # and the W8A16 tiles (~9 min)
  step a8_tests 60 python3 -m pytest -q -rf tests/kernels/test_fp8_gemm.py -k "scaled_gemm or routes"
  step a8_sweep_few 210 python3 benchmarks/fp8_probe.py --ms 16,32 --sweep-a8 \
    --out "$OUT/a8_sweep_few.json"
  step a8_sweep_128 170 python3 benchmarks/fp8_probe.py --ms 128 --sweep-a8 \
    --out "$OUT/a8_sweep_128.json"
  grep -c WRONG "$OUT"/a8_sweep_*.log
  # decode attention's launch shapes at B3's batches (128 rows at ~192, 16 at ~1k; ~1 min)
  step attn_sweep 100 python3 benchmarks/gpu_kernel_check.py --quick --sweep --only "ctx~"
  ;;
fastacc)  # FP8 tensor cores accumulating all of K (cuBLAS use_fast_accum, Triton FAST_ACC)
  # against each K step summed in fp32: card tests, time and error per projection (~2 min)
  step fastacc_tests 60 python3 -m pytest -q -rf tests/kernels/test_fp8_gemm.py -k "fast_acc"
  step fastacc 200 python3 benchmarks/fp8_probe.py --ms 16,32,128 --fast-acc \
    --out "$OUT/fastacc.json"
  grep fast_acc "$OUT/fastacc.log" | cut -c1-900
  ;;
mma)  # kernels.int4_mma against the GEMV (1 row) and the tile kernel (16 rows), then B2 int4
  # (ran 2026-12-07 13:34 before 564904f, when int4_mma also took one row: B2 compared that)
  step mma_tests 120 python3 -m pytest -q -rf tests/kernels/test_int4_mma.py \
    tests/kernels/test_int_gemm.py
  step mma_probe 400 python3 benchmarks/int4_probe.py --ms 1,16 --mma --sweep \
    --out "$OUT/mma_probe.json"
  step b2_int4_mma 60 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4_mma"
  step b2_int4_gemv 60 env CORMORANT_INT4_MMA_ROWS=0 $B b2 --quick --no-peer \
    --quantization int4 --out "$R/b2_int4_gemv"
  ;;
mma2)  # kernels.int4_mma routed from 2 rows at config_for's tuned settings
  step mma_tests 120 python3 -m pytest -q -rf tests/kernels/test_int4_mma.py \
    tests/kernels/test_int_gemm.py
  step mma_probe 150 python3 benchmarks/int4_probe.py --ms 1,2,8,16 --mma --out "$OUT/mma_probe.json"
  step b3_int4_mma 100 $B b3 --quick --no-peer --quantization int4 --out "$R/b3_int4_mma"
  step b3_int4_tiles 100 env CORMORANT_INT4_MMA_ROWS=0 $B b3 --quick --no-peer \
    --quantization int4 --out "$R/b3_int4_tiles"
  ;;
packed)  # the one-row int4 GEMV summing each word's products in packed bf16; attention's
  # split-KV segments merged in the same launch
  step packed_tests 170 python3 -m pytest -q -rf tests/kernels/test_int_gemm.py \
    tests/kernels/test_int4_mma.py tests/kernels/test_paged_attention_kernel.py \
    tests/kernels/test_fp8_kv_kernels.py
  step packed_probe 100 python3 benchmarks/int4_probe.py --ms 1 --packed \
    --out "$OUT/packed_probe.json"
  step b2_int4_packed 75 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4_packed"
  step b2_int4_fp32 75 env CORMORANT_INT_PACKED=0 $B b2 --quick --no-peer --quantization int4 \
    --out "$R/b2_int4_fp32"
  step b2_fp8 75 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_bf16 75 $B b2 --quick --no-peer --out "$R/b2_bf16"
  ;;
psweep)  # the packed int4 GEMV's launch settings swept per projection; B2 int4 and bf16
  # (attention's in-launch merge of 6c350e0 reverted: B2 bf16 5.83 with it, 5.64 before)
  step psweep 300 python3 benchmarks/int4_probe.py --ms 1 --packed --sweep \
    --out "$OUT/psweep.json"
  step b2_bf16 75 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_int4 75 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  ;;
pfinal)  # the packed GEMV at its tuned split (at most 8 programs a SM): card tests, per
  # projection, B2 int4 with it and without, FP8, bf16
  step pfinal_tests 120 python3 -m pytest -q -rf tests/kernels/test_int_gemm.py
  step pfinal_probe 60 python3 benchmarks/int4_probe.py --ms 1 --packed \
    --out "$OUT/pfinal_probe.json"
  step b2_int4 75 $B b2 --quick --no-peer --quantization int4 --out "$R/b2_int4"
  step b2_bf16 75 $B b2 --quick --no-peer --out "$R/b2_bf16"
  step b2_fp8 75 $B b2 --quick --no-peer --quantization fp8 --out "$R/b2_fp8"
  step b2_int4_fp32 75 env CORMORANT_INT_PACKED=0 $B b2 --quick --no-peer --quantization int4 \
    --out "$R/b2_int4_fp32"
  ;;
mma64)  # int4_mma at 17-64 rows (x padded to 32 / 64; not routed yet): card tests, per
  # projection against the tile kernel with its sweep, B3 int4 routed up to 64 rows and not
  step mma64_tests 120 python3 -m pytest -q -rf tests/kernels/test_int4_mma.py
  step mma64_probe 240 python3 benchmarks/int4_probe.py --ms 16,32,48,64 --mma --sweep \
    --out "$OUT/mma64_probe.json"
  step b3_int4_mma64 100 env CORMORANT_INT4_MMA_ROWS=64 $B b3 --quick --no-peer \
    --quantization int4 --out "$R/b3_int4_mma64"
  step b3_int4_mma16 100 $B b3 --quick --no-peer --quantization int4 --out "$R/b3_int4_mma16"
  ;;
next)  # tuning: the FP8 GEMV reducing once (ACC2D) swept per projection, the int GEMV's
  # launch settings
  step fp8_acc2d 220 python3 benchmarks/fp8_probe.py --ms 1 --sweep-acc2d --out "$OUT/fp8_acc2d.json"
  grep sweep_acc2d "$OUT/fp8_acc2d.log"
  step int4_sweep 150 python3 benchmarks/int4_probe.py --ms 1 --sweep --out "$OUT/int4_sweep.json"
  ;;
second)
  step fp8_rows 200 env CORMORANT_E4M3_CVT=bits python3 benchmarks/fp8_probe.py \
    --ms 2,16,32,64,128,256,512 --sweep-a8 --out "$OUT/fp8_rows.json"
  step cvt_probe 100 python3 benchmarks/cvt_probe.py --out "$OUT/cvt_probe.json"
  step b1_fp8kv_cast 50 $B b1 --quick --no-peer --kv-cache-dtype fp8 --out "$R/b1_fp8kv_cast"
  step int_tests 100 python3 -m pytest -q tests/kernels/test_int_gemm.py
  step cvt_sweep 120 python3 benchmarks/cvt_probe.py --sweep --out "$OUT/cvt_sweep.json"
  ;;
*) echo "unknown mode $1"; exit 2 ;;
esac
