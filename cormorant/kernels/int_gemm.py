"""Weight-only int4/int8 GEMM: y[M, N] = x[M, K] @ dequant(W)[K, N], dequantized inside the matmul.

The one runtime layout every int checkpoint format is repacked into (layers.int_linear):
  qweight  int32 [K / P, N], P = 32 / BITS codes per word, packed along K, lowest bits first:
           code of input row k, output column n = (qweight[k // P, n] >> (k % P) * BITS) & mask
  scales   [K / GROUP, N] in the activation dtype (or fp32)
  zeros    [K / GROUP, N] likewise (integers: w = (code - zero) * scale), or None for
           symmetric weights, whose zero is 2^(BITS-1) (no bytes read for it)
Full-precision weights never exist in memory: each program unpacks a [BLOCK_K, BLOCK_N] tile
of codes in registers. With a whole group per K tile (GROUP % BLOCK_K == 0, the usual case)
the scale is applied once per tile after the dot: acc += (x @ (codes - zero)) * scale, where
codes - zero is an exact small integer in bf16/fp16; otherwise each element is dequantized.

Launch shapes, chosen by `config_for(M, N, K, group, num_sms)`:
  one row (BLOCK_M 1): _int_gemv_kernel, no tensor cores: each word loaded once, its P codes
          shifted out one position at a time (an unrolled loop), multiplied by their inputs
          and accumulated in fp32 [words, BLOCK_N], reduced once at the end. Its input may
          be made on the fly, as kernels.gemv's prologues do (int_add_rms_norm_gemv,
          int_silu_mul_gemv): one launch where there were two. int4 bf16 rows on CUDA
          without a prologue (the default path) sum each word's 8 products in packed bf16
          instead (PACKED, _packed_word_sums): 11-18% less time per projection on the
          H100 (gate_up with its one-wave split), relative error 3.1e-3 against 1.7e-3;
          B2 int4 2.90 -> 2.63 ms/token. (Earlier forms,
          measured on the H100 at M = 1: unpacking along a middle axis [BLOCK_K / P, P,
          BLOCK_N] read at ~170 GB/s; a pointer per code at 700-870 GB/s, load-issue bound.)
  decode (2 <= M <= 64): int4 with groups of a multiple of 64 (the usual checkpoints) goes
          to kernels.int4_mma (tensor cores, two codes per lop3; on the H100 1.1-1.5x
          faster per projection at 16 rows, 1.3-5.3x at 32; MMA_ROWS); otherwise, up to 16
          rows, the tile kernel with BLOCK_M 16 (tl.dot), the codes unpacked by a reshape
          of [BLOCK_K / P, P, BLOCK_N] (a pointer per code measured slower here);
  both split K so that several programs per SM stream the weight at once (about 8 for the
          GEMV, 2 for the tile kernel, from the H100 sweeps): each split
          writes fp32 partials, summed in the same launch by the last split of each output
          tile to finish, in split order (deterministic): one launch per projection;
  prefill: 64 x 128 x 64 tiles through tl.dot, no split; from DEQUANT_MIN_ROWS rows on CUDA,
          int_dequant writes a dense W in the activation dtype (a temporary) and cuBLAS
          multiplies.
The tile and dequant kernels turn a code c into a float as the bits 0x4B000000 | c (2^23 + c)
less 2^23 + zero, exact: two integer ops, where an int-to-float conversion runs at a sixteenth
of the FMA rate. The GEMV does so too (MAGIC, on by default; CORMORANT_INT_MAGIC=0 for the
conversion), each code masked in place under a per-position exponent (see _gemv_tile).
fp32 inputs use IEEE dots (the parity reference); bf16/fp16 inputs use tensor cores with fp32
accumulation. `int_gemm_ref` is the PyTorch reference (dequantize, then matmul).
Imports torch, triton, kernels.gemv (the prologue codes and their input helper), kernels.pdl,
kernels.split_k (the in-launch split-K reduction) and kernels.int4_mma.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from cormorant.kernels import int4_mma, pdl, split_k
from cormorant.kernels.gemv import (PROLOGUE_ADD_NORM, PROLOGUE_NONE, PROLOGUE_SILU_MUL,
                                    _row_input)
from cormorant.kernels.int4_mma import NEG_128_BF16X2

DECODE_ROWS = 16  # M up to which the split-K decode shape runs
# The GEMV makes codes floats by bits (see _gemv_tile): B2 Llama-3.1-8B int4 3.37 -> 3.05
# ms/token on an H100 (2026-12-07; per projection at M = 1: qkv 10.9 -> 9.7 us, o 9.0 -> 8.6,
# gate_up 36.1 -> 31.3, down 20.6 -> 17.9), bit-identical for symmetric weights on the card.
# CORMORANT_INT_MAGIC=0 keeps the int-to-float conversion.
MAGIC_DEFAULT = os.environ.get("CORMORANT_INT_MAGIC", "1") == "1"
# The int4 GEMV sums each word's products in packed bf16 (_packed_word_sums: bf16 inputs on
# CUDA, whole-group tiles, no prologue); CORMORANT_INT_PACKED=0 keeps the fp32 form.
PACKED_DEFAULT = os.environ.get("CORMORANT_INT_PACKED", "1") == "1"
# Rows from which, on CUDA, W is dequantized per call for a dense (cuBLAS) matmul instead
# (`benchmarks/int4_probe.py --ms 64,...,4096`, H100, 2026-12-06, Llama-3.1-8B, group 128:
# at 64 rows qkv 61.6 -> 38.7 us, o 63.6 -> 22.6, down 205 -> 100; at 1,024 rows 2.5-2.8x
# faster). Writing a large W costs more than the tile kernel's reads at few rows: gate_up
# (117 M weights) 82 -> 194 us at 64 rows, 160 -> 196 at 128, 291 -> 212 at 256.
DEQUANT_MIN_ROWS = 64
DEQUANT_LARGE_WEIGHTS = 1 << 26  # weights above which dequantizing waits for 256 rows
# Rows up to which int4 weights (groups of a multiple of 64) go through kernels.int4_mma,
# the tensor-core form, from 2 rows (instead of the decode tile kernel, and at 64 rows the
# dequantization); 0 or 1: never. 64, its most: on an H100 (2026-12-07) a Llama-3.1-8B
# layer's four projections at 32 rows took 138 us against 405 before (the tile kernel), at
# 64 rows 189 against 250 (dequant + cuBLAS for three, the tile kernel for gate_up); B3
# int4 2048/128 1,045 -> 1,417 tok/s, 1000/1000 1,845 -> 3,483 (decode batches of 32).
MMA_ROWS = int(os.environ.get("CORMORANT_INT4_MMA_ROWS", "64"))


def _mma(m: int, bits: int, group: int, x: torch.Tensor, config: dict | None) -> bool:
    """Whether a call goes to kernels.int4_mma: no explicit config, int4, few rows."""
    return config is None and m <= MMA_ROWS and int4_mma.supports(m, bits, group, x)


@triton.jit
def _dot(x, w, IEEE: tl.constexpr):
    """x [BLOCK_M, BLOCK_K] @ w [BLOCK_K, BLOCK_N] in fp32 (IEEE for fp32 inputs)."""
    if IEEE:
        return tl.dot(x, w, input_precision="ieee")
    else:
        return tl.dot(x, w)


@triton.jit
def _bits_or_magic(words, mask, magic, ASM: tl.constexpr):
    """(words & mask) | magic. ptxas makes two LOP3s of it (both operands immediates); on
    CUDA (ASM) one lop3 in inline PTX, the magic in a register."""
    if ASM:
        return tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xEA;", "=r,r,r,r",
                                         [words, mask, magic], dtype=tl.int32,
                                         is_pure=True, pack=1)
    else:
        return (words & mask) | magic


@triton.jit
def _x_pairs(r_lo, r_hi):
    """From two int32 words of packed bf16 inputs (x[i], x[i + 1]) and (x[i + 4], x[i + 5]),
    the pairs (x[i], x[i + 4]) and (x[i + 1], x[i + 5]): one prmt each."""
    return tl.inline_asm_elementwise(
        "prmt.b32 $0, $2, $3, 0x5410; prmt.b32 $1, $2, $3, 0x7632;", "=r,=r,r,r",
        [r_lo, r_hi], dtype=(tl.int32, tl.int32), is_pure=True, pack=1)


@triton.jit
def _packed_word_sums(words, zz, xp0, xp1, xp2, xp3):
    """sum over a word's 8 int4 codes of (code - zero) * x, in packed bf16 (inline PTX): for
    j in 0..3 one lop3 makes the word's codes j and j + 4 the bf16 pair (128 + c_j,
    128 + c_j+4) (they lie at bits 4j and 4j + 16), one packed fma by 1.0 adds zz, the pair
    -(128 + zero), leaving the exact small integers c - zero, and one packed fma multiplies
    them by the inputs' pair xp_j = (x[8w + j], x[8w + j + 4]) into a bf16 pair of sums; the
    two halves are added in fp32. 19 sm_90 instructions for 8 codes where the fp32 form
    takes 24 (lop3, subtract, fma a code)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t, d, a, one, nz, l, h; .reg .f32 fl, fh; "
        "mov.b32 one, 0x3F803F80; mov.b32 nz, 0x80008000; "
        "lop3.b32 t, $1, 0x000F000F, 0x43004300, 0xEA; "
        "fma.rn.bf16x2 d, t, one, $2; fma.rn.bf16x2 a, d, $3, nz; "
        "shr.u32 t, $1, 4; lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA; "
        "fma.rn.bf16x2 d, t, one, $2; fma.rn.bf16x2 a, d, $4, a; "
        "shr.u32 t, $1, 8; lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA; "
        "fma.rn.bf16x2 d, t, one, $2; fma.rn.bf16x2 a, d, $5, a; "
        "shr.u32 t, $1, 12; lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA; "
        "fma.rn.bf16x2 d, t, one, $2; fma.rn.bf16x2 a, d, $6, a; "
        "shl.b32 l, a, 16; and.b32 h, a, 0xFFFF0000; mov.b32 fl, l; mov.b32 fh, h; "
        "add.f32 $0, fl, fh; }",
        "=f,r,r,r,r,r,r", [words, zz, xp0, xp1, xp2, xp3], dtype=tl.float32, is_pure=True,
        pack=1)


@triton.jit
def _gemv_tile(x_ptr, r_ptr, nw_ptr, res_out_ptr, q_ptr, s_ptr, z_ptr, k0, k_end, K, offs_n,
               mask_n, write_residual, stride_qk, stride_sg, BITS: tl.constexpr,
               GROUP: tl.constexpr, WORDS: tl.constexpr, TILE_GROUP: tl.constexpr,
               HAS_ZEROS: tl.constexpr, PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
               MAGIC: tl.constexpr, ASM: tl.constexpr, PACKED: tl.constexpr):
    """[WORDS, BLOCK_N] fp32 products of one K tile of WORDS * P inputs (see the GEMV), and
    the [WORDS] sums of the squared norm inputs (PROLOGUE 1; zeros otherwise). PACKED (int4,
    whole-group tiles, bf16 x read as it is, inline PTX): each word's 8 products summed in
    packed bf16 (_packed_word_sums)."""
    PACK: tl.constexpr = 32 // BITS
    if PACKED:
        rows = k0 // 8 + tl.arange(0, WORDS)
        mask_w = rows * 8 < k_end
        words = tl.load(q_ptr + rows[:, None] * stride_qk + offs_n[None, :],
                        mask=mask_w[:, None] & mask_n[None, :], other=0)
        g = k0 // GROUP
        mask_g = mask_n & (k0 < k_end)
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_g, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + g * stride_sg + offs_n, mask=mask_g, other=0.0)
            zz = NEG_128_BF16X2 + z.to(tl.int32)[None, :] * 0x10001
        else:
            zz = (offs_n * 0 + (NEG_128_BF16X2 + 8 * 0x10001))[None, :]  # zero 8
        # the word's 8 inputs x[8w .. 8w + 7] as 4 words of bf16 pairs, regrouped (j, j + 4)
        x_words = x_ptr.to(tl.pointer_type(tl.int32)) + rows * 4
        r0 = tl.load(x_words, mask=mask_w, other=0)
        r1 = tl.load(x_words + 1, mask=mask_w, other=0)
        r2 = tl.load(x_words + 2, mask=mask_w, other=0)
        r3 = tl.load(x_words + 3, mask=mask_w, other=0)
        xp0, xp1 = _x_pairs(r0, r2)
        xp2, xp3 = _x_pairs(r1, r3)
        part = _packed_word_sums(words, zz, xp0[:, None], xp1[:, None], xp2[:, None],
                                 xp3[:, None])
        return part * s[None, :], tl.zeros((WORDS,), dtype=tl.float32)
    MASK: tl.constexpr = (1 << BITS) - 1
    # MAGIC: code c as the fp32 whose bits are 0x4B000000 | c, i.e. 2^23 + c, then minus
    # (2^23 + zero): exact, and two integer ops instead of an int-to-float conversion (a
    # sixteenth of the FMA rate per SM), which bounded this kernel on the H100.
    OFFSET: tl.constexpr = 8388608.0 if MAGIC else 0.0
    # MAGIC with whole-group tiles masks each code in place instead: position j's code c at
    # bit sh, under the exponent of 2^(23 - sh), is the fp32 2^(23 - sh) + c (one LOP3);
    # less 2^(23 - sh) + zero it is c - zero, exact, with no shift and no scaling. Codes whose
    # bits reach past bit 22 come from the word shifted right by 16 (once per tile).
    # Asymmetric codes leave their zero to the end of the tile (z * the sum of the word's
    # inputs), so no per-column offset is made per position.
    SHIFTED: tl.constexpr = MAGIC and TILE_GROUP
    rows = k0 // PACK + tl.arange(0, WORDS)  # the word rows of this tile
    mask_w = rows * PACK < k_end
    words = tl.load(q_ptr + rows[:, None] * stride_qk + offs_n[None, :],
                    mask=mask_w[:, None] & mask_n[None, :], other=0)
    if TILE_GROUP:  # one scale (and zero) per column for the whole tile (none past K)
        g = k0 // GROUP
        mask_g = mask_n & (k0 < k_end)
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_g, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + g * stride_sg + offs_n, mask=mask_g,
                        other=0.0).to(tl.float32)[None, :] + OFFSET
        else:
            z = (1 << (BITS - 1)) + OFFSET
    part = tl.zeros(words.shape, dtype=tl.float32)
    sq = tl.zeros((WORDS,), dtype=tl.float32)
    x_words = tl.zeros((WORDS,), dtype=tl.float32)  # SHIFTED, asymmetric: inputs per word
    if SHIFTED:
        high = words >> 16
    for j in tl.static_range(PACK):
        ks = rows * PACK + j
        xj, sj = _row_input(x_ptr, r_ptr, nw_ptr, res_out_ptr, ks, mask_w, 0.0,
                            write_residual, K, PROLOGUE, HAS_RESIDUAL, False)
        if PROLOGUE == 1:
            sq += sj * sj
        if SHIFTED:
            low = j * BITS + BITS <= 23  # compile-time, as j is
            sh = j * BITS if low else j * BITS - 16
            zero = 0 if HAS_ZEROS else (1 << (BITS - 1))
            magic = (150 - sh) << 23  # the exponent field of 2^(23 - sh)
            if low:
                bits = _bits_or_magic(words, MASK << sh, magic, ASM)
            else:
                bits = _bits_or_magic(high, MASK << sh, magic, ASM)
            codes = bits.to(tl.float32, bitcast=True) - ((1 << (23 - sh)) + zero)
            part += codes * xj[:, None]
            if HAS_ZEROS:
                x_words += xj
        else:
            codes = (words >> (j * BITS)) & MASK
            if MAGIC:
                codes = (codes | 0x4B000000).to(tl.float32, bitcast=True)
            else:
                codes = codes.to(tl.float32)
            if TILE_GROUP:
                part += (codes - z) * xj[:, None]
            else:  # scales (and zeros) per element: groups smaller than a tile
                sz = (ks // GROUP)[:, None] * stride_sg + offs_n[None, :]
                sz_mask = mask_w[:, None] & mask_n[None, :]
                s2 = tl.load(s_ptr + sz, mask=sz_mask, other=0.0).to(tl.float32)
                if HAS_ZEROS:
                    z2 = tl.load(z_ptr + sz, mask=sz_mask, other=0.0).to(tl.float32) + OFFSET
                else:
                    z2 = (1 << (BITS - 1)) + OFFSET
                part += (codes - z2) * s2 * xj[:, None]
    if SHIFTED and HAS_ZEROS:
        part -= (z - OFFSET) * x_words[:, None]
    if TILE_GROUP:
        part = part * s[None, :]
    return part, sq


@triton.jit
def _int_gemv_kernel(x_ptr, r_ptr, nw_ptr, res_out_ptr, q_ptr, s_ptr, z_ptr, y_ptr, p_ptr,
                     sq_ptr, lock_ptr, N, K, K_PER_SPLIT, stride_qk, stride_sg, eps,
                     BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, SPLIT_K, TILE_GROUP: tl.constexpr,
                     HAS_ZEROS: tl.constexpr, SUB: tl.constexpr, PROLOGUE: tl.constexpr,
                     HAS_RESIDUAL: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr,
                     PACKED: tl.constexpr, PDL: tl.constexpr):
    """One row (M = 1), no tensor cores: each K tile's packed words are loaded once as a
    [BLOCK_K / P, BLOCK_N] tile; for each of the P code positions (an unrolled loop) the codes
    are shifted out and multiplied by their inputs (x[k] for k = word * P + j) into an fp32
    [words, BLOCK_N] accumulator, scaled per group; one reduction over the words at the end.
    SUB tiles per loop step (unrolled: more loads in flight). Split K is reduced in the same
    launch. The input may be made on the fly (kernels.gemv's prologues): SiLU-and-multiply
    elementwise; the residual add + RMSNorm as y = (sum_k s_k nw_k W_kn) / rms(s), each split
    summing its slice's squares beside its products, so no program reads more than its slice
    of K (the unfused path rounds s / rms * nw to bf16 first; this does not)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    WORDS: tl.constexpr = BLOCK_K // (32 // BITS)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((WORDS, BLOCK_N), dtype=tl.float32)
    sq = tl.zeros((WORDS,), dtype=tl.float32)
    k_begin = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)
    if PDL:  # CORMORANT_PDL_PREFETCH=1: the first step's words asked of the L2 before the wait
        LINE_WORDS: tl.constexpr = 32  # int32 words in a 128-byte line
        LINES: tl.constexpr = BLOCK_N // LINE_WORDS if BLOCK_N >= LINE_WORDS else 1
        pf_rows = tl.minimum(k_begin // (32 // BITS) + tl.arange(0, SUB * WORDS),
                             (k_end - 1) // (32 // BITS))
        pf_cols = tl.minimum(pid_n * BLOCK_N + tl.arange(0, LINES) * LINE_WORDS, N - 1)
        pdl.prefetch_l2(q_ptr + pf_rows[:, None] * stride_qk + pf_cols[None, :], PDL)
    pdl.wait(PDL)
    for k0 in range(k_begin, k_end, BLOCK_K * SUB):
        for t in tl.static_range(SUB):
            part, sq_part = _gemv_tile(
                x_ptr, r_ptr, nw_ptr, res_out_ptr, q_ptr, s_ptr, z_ptr, k0 + t * BLOCK_K,
                k_end, K, offs_n, mask_n, pid_n == 0, stride_qk, stride_sg, BITS, GROUP, WORDS,
                TILE_GROUP, HAS_ZEROS, PROLOGUE, HAS_RESIDUAL, MAGIC, ASM, PACKED)
            acc += part
            sq += sq_part
    pdl.launch_dependents(PDL)
    split_k.finish(tl.sum(acc, axis=0), y_ptr, offs_n, p_ptr, offs_n, N, lock_ptr, pid_n,
                   pid_k, mask_n, SPLIT_K, tl.sum(sq, axis=0), sq_ptr, tl.num_programs(0), K,
                   eps, PROLOGUE == 1)


@triton.jit
def _int_gemm_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, p_ptr, lock_ptr, M, N, K, K_PER_SPLIT,
                     stride_xm, stride_qk, stride_sg, stride_ym, BITS: tl.constexpr,
                     GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, SPLIT_K, TILE_GROUP: tl.constexpr,
                     HAS_ZEROS: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_w = tl.arange(0, BLOCK_K // PACK)
    offs_j = tl.arange(0, PACK)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_end
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        rows = k0 // PACK + offs_w  # each packed word loaded once, then spread along K
        words = tl.load(q_ptr + rows[:, None] * stride_qk + offs_n[None, :],
                        mask=(rows * PACK < k_end)[:, None] & mask_n[None, :], other=0)
        codes = (words[:, None, :] >> (offs_j * BITS)[None, :, None]) & MASK
        # 2^23 + code, exact, without an int-to-float conversion (see _gemv_tile)
        codes = (tl.reshape(codes, (BLOCK_K, BLOCK_N)) | 0x4B000000).to(tl.float32,
                                                                          bitcast=True)
        if TILE_GROUP:  # the whole tile is one group: scale after the dot
            g = k0 // GROUP
            s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
            if HAS_ZEROS:
                z = tl.load(z_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)
                w = (codes - (z.to(tl.float32)[None, :] + 8388608.0)).to(x.dtype)
            else:
                w = (codes - ((1 << (BITS - 1)) + 8388608.0)).to(x.dtype)
            acc += _dot(x, w, IEEE) * s.to(tl.float32)[None, :]
        else:
            g = offs_k // GROUP
            sz_offs = g[:, None] * stride_sg + offs_n[None, :]
            sz_mask = mask_k[:, None] & mask_n[None, :]
            s2 = tl.load(s_ptr + sz_offs, mask=sz_mask, other=0.0)
            if HAS_ZEROS:
                z2 = tl.load(z_ptr + sz_offs, mask=sz_mask, other=0.0).to(tl.float32)
            else:
                z2 = (1 << (BITS - 1))
            acc += _dot(x, ((codes - (z2 + 8388608.0)) * s2.to(tl.float32)).to(x.dtype), IEEE)
    split_k.finish(acc, y_ptr, offs_m[:, None] * stride_ym + offs_n[None, :], p_ptr,
                   offs_m[:, None] * N + offs_n[None, :], M * N, lock_ptr,
                   pid_m * tl.num_programs(1) + pid_n, pid_k,
                   mask_m[:, None] & mask_n[None, :], SPLIT_K, 0.0, p_ptr, 0, K, 0.0, False)


@triton.jit
def _int_dequant_kernel(q_ptr, s_ptr, z_ptr, w_ptr, K, N, stride_qk, stride_sg, stride_wk,
                        BITS: tl.constexpr, GROUP: tl.constexpr, WORDS: tl.constexpr,
                        BLOCK_N: tl.constexpr, HAS_ZEROS: tl.constexpr):
    """W [K, N] = (code - zero) * scale for a [WORDS * P, BLOCK_N] tile: each word loaded
    once, its P codes shifted out in an unrolled loop, each a strided row block of W."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    rows = tl.program_id(0) * WORDS + tl.arange(0, WORDS)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows * PACK < K)[:, None] & (offs_n < N)[None, :]
    words = tl.load(q_ptr + rows[:, None] * stride_qk + offs_n[None, :], mask=mask, other=0)
    for j in tl.static_range(PACK):
        ks = rows * PACK + j
        sz = (ks // GROUP)[:, None] * stride_sg + offs_n[None, :]
        s = tl.load(s_ptr + sz, mask=mask, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + sz, mask=mask, other=0.0).to(tl.float32)
        else:
            z = (1 << (BITS - 1))
        codes = (((words >> (j * BITS)) & MASK) | 0x4B000000).to(tl.float32, bitcast=True)
        w = (codes - (z + 8388608.0)) * s  # 2^23 + code: see _gemv_tile
        tl.store(w_ptr + ks[:, None] * stride_wk + offs_n[None, :],
                 w.to(w_ptr.dtype.element_ty), mask=mask)


def int_dequant(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                bits: int, group: int, dtype: torch.dtype) -> torch.Tensor:
    """The runtime layout to a dense W [K, N] in `dtype` (fp32 arithmetic, one rounding):
    for many rows, dequantizing once and a dense matmul beat the tile kernel (int_gemm)."""
    k, n = qweight.shape[0] * (32 // bits), qweight.shape[1]
    w = torch.empty(k, n, device=qweight.device, dtype=dtype)
    words, block_n = 8, 128
    grid = (triton.cdiv(qweight.shape[0], words), triton.cdiv(n, block_n))
    _int_dequant_kernel[grid](qweight, scales, scales if zeros is None else zeros, w, k, n,
                              qweight.stride(0), scales.stride(0), w.stride(0), BITS=bits,
                              GROUP=group, WORDS=words, BLOCK_N=block_n,
                              HAS_ZEROS=zeros is not None, num_warps=4)
    return w


def config_for(m: int, n: int, k: int, group: int, num_sms: int, packed: bool = False
               ) -> dict:
    """Tile sizes and split-K for one call on a device of num_sms multiprocessors (see the
    module docstring): the decode shapes split K until a few programs per SM run. packed:
    the one-row GEMV will sum in packed bf16 (_can_pack)."""
    if m == 1:
        block_k = 128
        while group % block_k and block_k > 32:
            block_k //= 2
        # H100 sweep (int4_probe, 2026-12-06): four tiles a step and ~8 programs per SM
        # were best on every Llama-3.1-8B projection (1.3-1.6 TB/s of int4 weight). The
        # packed form (sweep of 2026-12-07) wants at most 8 a SM: gate_up 28.1 -> 25.7 us
        # with 2 splits instead of 3 (6.8 programs a SM, one wave); the others unchanged.
        return dict(BLOCK_M=1, BLOCK_N=64, BLOCK_K=block_k, SUB=4, num_warps=4, num_stages=2,
                    **split_k.split_k(n, k, 64, 4 * block_k, 8, num_sms, at_most=packed))
    if m <= DECODE_ROWS:
        block_k = 128
        while group % block_k and block_k > 32:
            block_k //= 2
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=block_k, num_warps=4, num_stages=3,
                    **split_k.split_k(n, k, 64, block_k, 2, num_sms))
    block_k = 64 if group % 64 == 0 else 32
    return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=block_k, SPLIT_K=1,
                K_PER_SPLIT=triton.cdiv(k, block_k) * block_k, num_warps=4, num_stages=3)


def int_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
             zeros: torch.Tensor | None, bits: int, group: int, config: dict | None = None
             ) -> torch.Tensor:
    """x [M, K] (fp32/bf16/fp16, contiguous rows) @ the int weight -> [M, N] in x's dtype."""
    m, k = x.shape
    n = qweight.shape[1]
    if qweight.shape[0] * (32 // bits) != k or scales.shape != (k // group, n):
        raise ValueError(f"int_gemm: x {tuple(x.shape)} does not match qweight "
                         f"{tuple(qweight.shape)} / scales {tuple(scales.shape)} ({bits} bits, "
                         f"group {group})")
    if _mma(m, bits, group, x, config):
        return int4_mma.int4_mma(x, qweight, scales, zeros, group)
    if config is None and x.device.type == "cuda" and m >= DEQUANT_MIN_ROWS and (
            n * k <= DEQUANT_LARGE_WEIGHTS or m >= 4 * DEQUANT_MIN_ROWS):
        return x.contiguous() @ int_dequant(qweight, scales, zeros, bits, group, x.dtype)
    packed = m == 1 and PACKED_DEFAULT and _can_pack(x, bits, PROLOGUE_NONE)
    cfg = dict(config or config_for(m, n, k, group, split_k.num_sms(x.device), packed))
    if cfg["K_PER_SPLIT"] % cfg["BLOCK_K"] or cfg["SPLIT_K"] * cfg["K_PER_SPLIT"] < k:
        raise ValueError("K_PER_SPLIT must be a multiple of BLOCK_K, and the splits cover K")
    x = x.contiguous()
    common = dict(BITS=bits, GROUP=group, TILE_GROUP=group % cfg["BLOCK_K"] == 0,
                  HAS_ZEROS=zeros is not None)
    zeros_arg = scales if zeros is None else zeros
    if cfg["BLOCK_M"] == 1:
        if m != 1:
            raise ValueError("int_gemm: BLOCK_M 1 is for a single row")
        return _gemv(x, qweight, scales, zeros_arg, cfg, common)
    per_split = cfg.pop("K_PER_SPLIT")
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), cfg["SPLIT_K"])
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    partials = torch.empty(cfg["SPLIT_K"], m, n, device=x.device, dtype=torch.float32)
    _int_gemm_kernel[grid](x, qweight, scales, zeros_arg, y, partials,
                           split_k.locks(x.device, grid[0] * grid[1]), m, n, k, per_split,
                           x.stride(0), qweight.stride(0), scales.stride(0), y.stride(0),
                           IEEE=x.dtype == torch.float32, **common, **cfg)
    return y


def _can_pack(x: torch.Tensor, bits: int, prologue: int) -> bool:
    """Whether the GEMV may sum in packed bf16 (given whole-group tiles): int4, bf16 x read
    as it is (no prologue) from a 16-byte aligned row, inline PTX (CUDA, sm_80 and later)."""
    return (bits == 4 and prologue == PROLOGUE_NONE and x.dtype == torch.bfloat16
            and x.data_ptr() % 16 == 0 and split_k.inline_ptx(x.device)
            and split_k.has_bf16x2(x.device))


def _gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
          cfg: dict, common: dict, prologue: int = PROLOGUE_NONE, k: int | None = None,
          residual: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
          eps: float = 0.0, residual_out: torch.Tensor | None = None) -> torch.Tensor:
    """One row through _int_gemv_kernel, split K reduced inside the launch."""
    n, k = qweight.shape[1], x.shape[1] if k is None else k
    cfg = {key: v for key, v in cfg.items() if key != "BLOCK_M"}
    per_split = cfg.pop("K_PER_SPLIT")
    cfg.setdefault("SUB", 1)
    cfg.setdefault("MAGIC", MAGIC_DEFAULT)
    cfg["PACKED"] = bool(cfg.get("PACKED", PACKED_DEFAULT) and common["TILE_GROUP"]
                         and _can_pack(x, common["BITS"], prologue))
    if per_split % (cfg["BLOCK_K"] * cfg["SUB"]):
        raise ValueError("the GEMV's K_PER_SPLIT must be a multiple of BLOCK_K * SUB")
    tiles = triton.cdiv(n, cfg["BLOCK_N"])
    y = torch.empty(1, n, device=x.device, dtype=x.dtype)
    partials = torch.empty(cfg["SPLIT_K"], n, device=x.device, dtype=torch.float32)
    squares = (torch.empty(cfg["SPLIT_K"], tiles, device=x.device, dtype=torch.float32)
               if prologue == PROLOGUE_ADD_NORM and cfg["SPLIT_K"] > 1 else partials)
    _int_gemv_kernel[(tiles, cfg["SPLIT_K"])](
        x, residual if residual is not None else x,
        norm_weight if norm_weight is not None else x,
        residual_out if residual_out is not None else x, qweight, scales, zeros, y, partials,
        squares, split_k.locks(x.device, tiles), n, k, per_split, qweight.stride(0),
        scales.stride(0), eps, PROLOGUE=prologue, HAS_RESIDUAL=residual is not None,
        ASM=split_k.inline_ptx(x.device), **pdl.launch_options(x.device), **common, **cfg)
    return y


def _gemv_prologue_args(x: torch.Tensor, k: int, qweight: torch.Tensor, scales: torch.Tensor,
                        zeros: torch.Tensor | None, bits: int, group: int,
                        config: dict | None) -> tuple[dict, dict, torch.Tensor]:
    """The GEMV's settings for one row whose input a prologue makes (see int_gemm)."""
    n = qweight.shape[1]
    if x.shape[0] != 1 or not x.is_contiguous():
        raise ValueError("the int GEMV's prologues take one contiguous row")
    if qweight.shape[0] * (32 // bits) != k or scales.shape != (k // group, n):
        raise ValueError(f"int GEMV: K {k} does not match qweight {tuple(qweight.shape)} / "
                         f"scales {tuple(scales.shape)} ({bits} bits, group {group})")
    cfg = dict(config or config_for(1, n, k, group, split_k.num_sms(x.device)))
    common = dict(BITS=bits, GROUP=group, TILE_GROUP=group % cfg["BLOCK_K"] == 0,
                  HAS_ZEROS=zeros is not None)
    return cfg, common, scales if zeros is None else zeros


def int_add_rms_norm_gemv(hidden: torch.Tensor, residual: torch.Tensor | None,
                          norm_weight: torch.Tensor, eps: float, qweight: torch.Tensor,
                          scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
                          group: int, config: dict | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(hidden + residual) @ dequant(W), hidden + residual) for one row in one launch;
    residual None: RMSNorm(hidden). The norm's 1 / rms is applied to the sums, not to each
    input (see _int_gemv_kernel): within rounding of int_gemm after the unfused norm."""
    k = hidden.shape[1]
    cfg, common, zeros_arg = _gemv_prologue_args(hidden, k, qweight, scales, zeros, bits,
                                                 group, config)
    residual_out = None
    if residual is not None:
        assert residual.shape == hidden.shape and residual.is_contiguous()
        residual_out = torch.empty_like(hidden)
    y = _gemv(hidden, qweight, scales, zeros_arg, cfg, common, PROLOGUE_ADD_NORM, k, residual,
              norm_weight, eps, residual_out)
    return y, (residual_out if residual_out is not None else hidden)


def int_silu_mul_gemv(gate_up: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                      zeros: torch.Tensor | None, bits: int, group: int,
                      config: dict | None = None) -> torch.Tensor:
    """(silu(gate) * up) @ dequant(W) for one row gate_up [1, 2K] = cat(gate, up)."""
    assert gate_up.shape[1] % 2 == 0
    k = gate_up.shape[1] // 2
    cfg, common, zeros_arg = _gemv_prologue_args(gate_up, k, qweight, scales, zeros, bits,
                                                 group, config)
    return _gemv(gate_up, qweight, scales, zeros_arg, cfg, common, PROLOGUE_SILU_MUL, k)


def dequantize_ref(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                   bits: int, group: int) -> torch.Tensor:
    """The runtime layout back to fp32 W [K, N] (the reference; tests and the CPU path)."""
    pack = 32 // bits
    shifts = torch.arange(pack, device=qweight.device, dtype=torch.int32) * bits
    codes = (qweight[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)
    codes = codes.reshape(-1, qweight.shape[1]).float()
    zero = 2 ** (bits - 1) if zeros is None else zeros.float().repeat_interleave(group, 0)
    return (codes - zero) * scales.float().repeat_interleave(group, 0)


def int_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor | None, bits: int, group: int) -> torch.Tensor:
    """PyTorch reference of int_gemm: dequantize to fp32, then matmul in fp32."""
    return (x.float() @ dequantize_ref(qweight, scales, zeros, bits, group)).to(x.dtype)
