"""int4 weight-only matmul of a few rows (2-64) on tensor cores: y = x @ dequant(W).

Same runtime layout as kernels.int_gemm (qweight int32 [K / 8, N], codes packed along K,
lowest bits first; scales [K / GROUP, N]; zeros likewise or None for symmetric weights).
int_gemm sends it int4 calls of 2 to MMA_ROWS (64) rows. Its tile kernel (codes unpacked by
a reshape of [K / 8, 8, N], made floats in fp32) served 2-16 rows at about the cost of 16
and 17-63 at the cost of 64 (one 64-row tile). Here:
  - the product is computed transposed, acc[BLOCK_N, BLOCK_M] = W_tile^T @ x_tile^T, so the
    dequantized weights are the dot's first operand and stay in registers (on Hopper a
    wgmma reads its first operand from registers; x, the second, goes through shared
    memory); the rows of x are padded to BLOCK_M (16, the dot's smallest side, 32 or 64);
  - one lop3 makes two codes bf16 (or fp16) at once: the word's codes j and j + 4 lie at
    bits 4j and 4j + 16, so (word >> 4j) & 0x000F000F | 0x43004300 is the bf16 pair
    (128 + c_j, 128 + c_j+4), and one packed subtract of 128 + zero makes them c - zero,
    exact small integers; the scale is applied per group after the dots;
  - the dot's K order is chosen to match: within a tile, dot position 2w + h holds code
    j + 4h of word w (one dot per j in 0..3), so each register pair the tensor core reads is
    one lop3's output (no repacking), and x is read at the same permuted positions;
  - K is split so that a few programs per SM stream W; the splits are reduced in the launch
    (kernels.split_k).
About 3.4 sm_90 instructions a code. H100, Llama-3.1-8B projections against the tile kernel
(int4_probe --mma, 2026-12-07): at 2 rows qkv 20.2 -> 13.6 us, o 13.2 -> 10.4, gate_up
65.6 -> 40.9, down 36.6 -> 23.4; at 16 rows 20.4 -> 14.4, 13.3 -> 11.7, 65.1 -> 43.7,
36.3 -> 25.1; B3 int4 128/2048 (batches of 16) 2,435 -> 3,150 tok/s. At 32 rows (BLOCK_M
32, config_for's 17-64 row settings, from the sweep of 19:48) qkv 58.7 -> 18.5, o 59.5 ->
14.6, gate_up 86.8 -> 66.7, down 200.1 -> 37.7; B3 int4 1000/1000 (batches of 32) 1,845 ->
3,483 tok/s with the settings before that sweep. At one row it lost
to int_gemm's GEMV (qkv 10.1 -> 13.9 us at its best settings, gate_up 30.5 -> 40.6; B2 int4
2.89 -> 3.85 ms/token), so one row stays there.
fp32 inputs (the CPU parity path under the interpreter) use the same K order, with the codes
made by shifts and IEEE dots. Only int4 with groups of a multiple of 64 (one group per K tile
of 64 or 128 codes).
Imports torch, triton, kernels.pdl and kernels.split_k.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cormorant.kernels import pdl, split_k

MIN_ROWS, MAX_ROWS = 2, 64  # one row keeps int_gemm's GEMV; rows padded to 16, 32 or 64
# -(128 + zero) as packed bf16 bits is 0xC300 | zero in both halves: this plus zero * 0x10001
NEG_128_BF16X2 = tl.constexpr(-1023360256)  # 0xC300C300 as an int32 (also kernels.int_gemm's)


@triton.jit
def _code_pairs(words, j: tl.constexpr, zz, z, DT: tl.constexpr, ASM: tl.constexpr):
    """The codes j and j + 4 of each word, less their zero, in DT (exact). ASM: one lop3 and
    one packed subtract per word (zz: the packed bits of 128 + zero, or 1024 + zero in fp16;
    negated for bf16, whose subtract is an fma by 1.0: sub.bf16x2 needs sm_90, fma sm_80);
    otherwise shifts and fp32 arithmetic (z: the zero as a float)."""
    if ASM:
        if DT == tl.bfloat16:
            lo, hi = tl.inline_asm_elementwise(
                "{ .reg .b32 t, one; mov.b32 one, 0x3F803F80; "
                "lop3.b32 t, $2, 0x000F000F, 0x43004300, 0xEA; "
                "fma.rn.bf16x2 t, t, one, $3; mov.b32 {$0, $1}, t; }",
                "=h,=h,r,r", [words >> (4 * j), zz], dtype=(tl.bfloat16, tl.bfloat16),
                is_pure=True, pack=1)
        else:
            lo, hi = tl.inline_asm_elementwise(
                "{ .reg .b32 t; lop3.b32 t, $2, 0x000F000F, 0x64006400, 0xEA; "
                "sub.rn.f16x2 t, t, $3; mov.b32 {$0, $1}, t; }",
                "=h,=h,r,r", [words >> (4 * j), zz], dtype=(tl.float16, tl.float16),
                is_pure=True, pack=1)
        return lo, hi
    else:
        lo = ((words >> (4 * j)) & 15).to(tl.float32) - z
        hi = ((words >> (4 * j + 16)) & 15).to(tl.float32) - z
        return lo.to(DT), hi.to(DT)


@triton.jit
def _int4_mma_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, p_ptr, lock_ptr, M, N, K, K_PER_SPLIT,
                     stride_xm, stride_qk, stride_sg, stride_ym, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, WORDS: tl.constexpr, SPLIT_K,
                     HAS_ZEROS: tl.constexpr, EVEN: tl.constexpr, IEEE: tl.constexpr,
                     ASM: tl.constexpr, PDL: tl.constexpr):
    """acc[BLOCK_N, BLOCK_M] over K_PER_SPLIT of K in tiles of WORDS words (8 * WORDS codes,
    one group): four dots a tile, of 2 * WORDS positions each (see the module docstring). EVEN:
    N and K are whole tiles and splits, so nothing is masked but the rows of x."""
    DT: tl.constexpr = y_ptr.dtype.element_ty
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    kk = tl.arange(0, 2 * WORDS)
    k_perm = (kk // 2) * 8 + 4 * (kk % 2)  # dot position -> code within the tile, less j
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    k_begin = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)
    pdl.wait(PDL)
    for k0 in range(k_begin, k_end, 8 * WORDS):
        rows = k0 // 8 + tl.arange(0, WORDS)
        if EVEN:
            words = tl.load(q_ptr + rows[None, :] * stride_qk + offs_n[:, None])
        else:
            words = tl.load(q_ptr + rows[None, :] * stride_qk + offs_n[:, None],
                            mask=(rows * 8 < k_end)[None, :] & mask_n[:, None], other=0)
        g = k0 // (8 * WORDS)
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            z = tl.load(z_ptr + g * stride_sg + offs_n, mask=mask_n, other=0.0)[:, None]
        else:
            z = tl.full((BLOCK_N, 1), 8.0, tl.float32)
        if ASM:  # -(128 + z) as packed bf16 bits; 1024 + z in fp16, 0x6400 | z
            base = NEG_128_BF16X2 if DT == tl.bfloat16 else 0x64006400
            zz = base + z.to(tl.int32) * 0x10001 + tl.zeros((BLOCK_N, WORDS), tl.int32)
        else:
            zz = 0
        tile = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for j in tl.static_range(4):
            ks = k0 + k_perm + j
            if EVEN:  # a constant mask: no compare
                in_k = tl.full((2 * WORDS,), 1, tl.int1)
            else:
                in_k = ks < k_end
            xb = tl.load(x_ptr + offs_m[None, :] * stride_xm + ks[:, None],
                         mask=mask_m[None, :] & in_k[:, None], other=0.0)
            lo, hi = _code_pairs(words, j, zz, z.to(tl.float32), DT, ASM)
            a = tl.reshape(tl.join(lo, hi), (BLOCK_N, 2 * WORDS))
            if IEEE:
                tile = tl.dot(a, xb, tile, input_precision="ieee")
            else:
                tile = tl.dot(a, xb, tile)
        acc += tile * s[:, None]
    pdl.launch_dependents(PDL)
    split_k.finish(acc, y_ptr, offs_m[None, :] * stride_ym + offs_n[:, None], p_ptr,
                   offs_m[None, :] * N + offs_n[:, None], M * N, lock_ptr, pid_n, pid_k,
                   mask_m[None, :] & mask_n[:, None], SPLIT_K, 0.0, p_ptr, 0, K, 0.0, False)


def supports(m: int, bits: int, group: int, x: torch.Tensor) -> bool:
    """Whether this kernel takes the call: int4, 2-64 rows, groups of a multiple of 64; bf16
    (sm_80 and later) and fp16 where the kernel is compiled (the interpreter's bf16 dot is
    wrong), fp32 too."""
    compiled = x.device.type == "cuda" and split_k.inline_ptx(x.device)
    return bits == 4 and MIN_ROWS <= m <= MAX_ROWS and group % 64 == 0 and (
        x.dtype == torch.float32 or (compiled and x.dtype == torch.float16)
        or (compiled and x.dtype == torch.bfloat16 and split_k.has_bf16x2(x.device)))


def config_for(m: int, n: int, k: int, group: int, num_sms: int) -> dict:
    """A K tile of one group (up to 128 codes), 128 columns a program. From the H100 sweeps
    (int4_probe --mma --sweep, 2026-12-07, Llama-3.1-8B). Up to 16 rows: with at least a
    column tile per SM (gate_up) 4 warps, 3 stages and K split for ~2 programs per SM; with
    fewer (qkv, o, down) 8 warps, 2 stages and ~4 programs per SM. 17-64 rows (BLOCK_M 32 or
    64): 8 warps and 3 stages everywhere, K split for ~2 programs per SM, ~4 where K is long
    (down's 14,336; qkv's and o's 4,096 took 2)."""
    words = 16 if group % 128 == 0 else 8
    block_m = _block_m(m)
    wide = triton.cdiv(n, 128) >= num_sms
    if block_m > 16:
        warps, stages, per_sm = 8, 3, 2 if wide or k <= 8192 else 4
    elif wide:
        warps, stages, per_sm = 4, 3, 2
    else:
        warps, stages, per_sm = 8, 2, 4
    return dict(BLOCK_M=block_m, BLOCK_N=128, WORDS=words, num_warps=warps, num_stages=stages,
                **split_k.split_k(n, k, 128, 8 * words, per_sm, num_sms))


def _block_m(m: int) -> int:
    """The dot's row side for m rows of x: 16 (its smallest), 32 or 64."""
    return max(16, triton.next_power_of_2(m))


def int4_mma(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
             zeros: torch.Tensor | None, group: int, config: dict | None = None
             ) -> torch.Tensor:
    """x [M <= 64, K] @ the int4 weight -> [M, N] in x's dtype (int_gemm checked the shapes)."""
    m, k = x.shape
    n = qweight.shape[1]
    cfg = dict(config or config_for(m, n, k, group, split_k.num_sms(x.device)))
    cfg.setdefault("BLOCK_M", _block_m(m))
    if group % (8 * cfg["WORDS"]) or cfg["K_PER_SPLIT"] % (8 * cfg["WORDS"]):
        raise ValueError("int4_mma: a K tile is one group, and a split whole tiles")
    if not m <= cfg["BLOCK_M"] <= 64:
        raise ValueError(f"int4_mma: BLOCK_M {cfg['BLOCK_M']} must hold the {m} rows (<= 64)")
    x = x.contiguous()
    tiles = triton.cdiv(n, cfg["BLOCK_N"])
    per_split = cfg.pop("K_PER_SPLIT")
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    partials = torch.empty(cfg["SPLIT_K"], m, n, device=x.device, dtype=torch.float32)
    _int4_mma_kernel[(tiles, cfg["SPLIT_K"])](
        x, qweight, scales, scales if zeros is None else zeros, y, partials,
        split_k.locks(x.device, tiles), m, n, k, per_split, x.stride(0), qweight.stride(0),
        scales.stride(0), y.stride(0), HAS_ZEROS=zeros is not None,
        EVEN=n % cfg["BLOCK_N"] == 0 and k % per_split == 0, IEEE=x.dtype == torch.float32,
        ASM=split_k.inline_ptx(x.device) and x.dtype != torch.float32,
        **pdl.launch_options(x.device), **cfg)
    return y
