"""kernels.e4m3: e4m3 codes made bf16 by integer ops, exactly.

On every machine: the bit construction (in PyTorch, `bits_ref`) gives each of the 254 finite
codes' value times 2^-120, subnormals included. On a CUDA sm_90+ card (skipped elsewhere: the
inline PTX does not run under the interpreter; tests/kernels/sm90_compile.py compiles it for
sm_90 in CI): the kernel equals Triton's cast for every code, and paged attention over an fp8
cache gives the same bytes with the integer path as with Triton's casts; the same for the
fp16 form (the codes times 2^-8) and paged attention's fp16 dots.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from cormorant.kernels import e4m3  # noqa: E402

ALL_CODES = torch.arange(256, dtype=torch.uint8)
FINITE = ~ALL_CODES.view(torch.float8_e4m3fn).float().isnan()
ON_HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)
needs_hopper = pytest.mark.skipif(not ON_HOPPER, reason="needs CUDA on an sm_90+ card (inline PTX)")


def test_the_bit_construction_is_each_code_times_2_to_the_minus_120():
    got = e4m3.bits_ref(ALL_CODES).float() * 2.0 ** 120
    want = ALL_CODES.view(torch.float8_e4m3fn).float()
    assert torch.equal(got[FINITE], want[FINITE])
    assert (want[FINITE].abs() < 2 ** -6).sum() == 16  # +-0 and the 14 subnormals among them


def test_the_f16_construction_is_each_code_times_2_to_the_minus_8():
    got = e4m3.f16_bits_ref(ALL_CODES).float() * 2.0 ** 8
    want = ALL_CODES.view(torch.float8_e4m3fn).float()
    assert torch.equal(got[FINITE], want[FINITE])


def test_on_by_default_on_hopper_off_when_switched_off_and_never_off_cuda(monkeypatch):
    monkeypatch.delenv("CORMORANT_E4M3_CVT", raising=False)
    assert e4m3.available(torch.device("cuda")) == ON_HOPPER
    assert not e4m3.available(torch.device("cpu"))
    monkeypatch.setenv("CORMORANT_E4M3_CVT", "hw")
    assert not e4m3.available(torch.device("cuda"))


@triton.jit
def _convert_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    codes = tl.load(src_ptr + offs, mask=offs < n, other=0)
    tl.store(dst_ptr + offs, e4m3.e4m3_to_bf16(codes), mask=offs < n)


@triton.jit
def _convert_f16_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    codes = tl.load(src_ptr + offs, mask=offs < n, other=0)
    tl.store(dst_ptr + offs, e4m3.e4m3_to_f16_scaled(codes), mask=offs < n)


@needs_hopper
def test_the_f16_kernel_is_the_cast_times_2_to_the_minus_8_for_every_code():
    codes = ALL_CODES.repeat(8).cuda()
    out = torch.empty(codes.numel(), dtype=torch.float16, device="cuda")
    _convert_f16_kernel[(2,)](codes, out, codes.numel(), BLOCK=1024)
    want = codes.view(torch.float8_e4m3fn).to(torch.float16) * 2.0 ** -8  # exact
    finite = FINITE.repeat(8).cuda()
    assert torch.equal(out[finite].view(torch.int16), want[finite].view(torch.int16))


@needs_hopper
def test_the_kernel_equals_the_cast_for_every_code():
    codes = ALL_CODES.repeat(8).cuda()  # 2,048: several packs of four per thread
    out = torch.empty(codes.numel(), dtype=torch.bfloat16, device="cuda")
    _convert_kernel[(2,)](codes, out, codes.numel(), BLOCK=1024)
    want = codes.view(torch.float8_e4m3fn).to(torch.bfloat16)
    finite = FINITE.repeat(8).cuda()
    assert torch.equal(out[finite].view(torch.int16), want[finite].view(torch.int16))


@needs_hopper
@pytest.mark.parametrize("lens", [([1] * 6, [70, 3, 129, 40, 1, 64]),  # decodes
                                  ([5, 1, 20], [37, 50, 20])])  # a chunk, a decode, a prefill
def test_paged_attention_reads_the_fp8_cache_alike_both_ways(lens, make_batch, monkeypatch):
    from cormorant.kernels.paged_attention import paged_attention, paged_attention_ref
    monkeypatch.delenv("CORMORANT_KV_FP8_CVT", raising=False)
    batch = make_batch(*lens, 16, 8, 128, dtype=torch.bfloat16, device="cuda", seed=3)
    k_scale = torch.tensor(0.05, device="cuda")
    v_scale = torch.tensor(0.3, device="cuda")
    cache = torch.empty_like(batch.kv_cache, dtype=torch.float8_e4m3fn)
    cache[0] = (batch.kv_cache[0].float() / k_scale).clamp(-448, 448).to(cache.dtype)
    cache[1] = (batch.kv_cache[1].float() / v_scale).clamp(-448, 448).to(cache.dtype)
    args = (batch.q, cache[0], cache[1], batch.query_start_loc, batch.seq_lens,
            batch.block_tables, 0.088)
    monkeypatch.setenv("CORMORANT_E4M3_CVT", "bits")
    assert e4m3.available(batch.q.device)
    bits = paged_attention(*args, max(batch.query_lens), k_scale=k_scale, v_scale=v_scale)
    monkeypatch.setenv("CORMORANT_E4M3_CVT", "hw")
    cast = paged_attention(*args, max(batch.query_lens), k_scale=k_scale, v_scale=v_scale)
    assert torch.equal(bits, cast)
    assert bits.float().abs().sum() > 0
    # fp16 dots (CORMORANT_KV_FP8_CVT): f16_cast (keys by the hardware conversion, values as
    # code pairs through e4m3x2_to_f16x2) and f16_bits (integer ops, times 2^-8 folded back)
    # read the same fp16 values, so agree to fp32 summation order, and are as close to the
    # reference as the bf16 dots.
    monkeypatch.setenv("CORMORANT_E4M3_CVT", "bits")
    f16 = []
    for name in ("f16_cast", "f16_bits"):
        monkeypatch.setenv("CORMORANT_KV_FP8_CVT", name)
        f16.append(paged_attention(*args, max(batch.query_lens), k_scale=k_scale,
                                   v_scale=v_scale).float())
    assert (f16[0] - f16[1]).norm() / f16[1].norm() < 1e-3
    ref = paged_attention_ref(*args, k_scale=k_scale, v_scale=v_scale).float()
    for out in (bits.float(), f16[0]):
        assert (out - ref).norm() / ref.norm() < 1e-2


@triton.jit
def _pairs_kernel(src_ptr, lo_ptr, hi_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    lo, hi = e4m3.e4m3x2_to_f16x2(tl.load(src_ptr + offs, mask=offs < n, other=0))
    tl.store(lo_ptr + offs, lo, mask=offs < n)
    tl.store(hi_ptr + offs, hi, mask=offs < n)


@needs_hopper
def test_the_pair_conversion_is_the_cast_for_every_pair_of_codes():
    codes = torch.cartesian_prod(ALL_CODES.int(), ALL_CODES.int()).to(torch.uint8).cuda()
    pairs = codes.contiguous().view(torch.int16).flatten()  # low byte first (little-endian)
    lo = torch.empty(pairs.numel(), dtype=torch.float16, device="cuda")
    hi = torch.empty_like(lo)
    _pairs_kernel[(pairs.numel() // 1024,)](pairs, lo, hi, pairs.numel(), BLOCK=1024)
    want = codes.view(torch.float8_e4m3fn).to(torch.float16)  # [65536, 2]
    finite = want.isfinite().all(dim=1)
    assert torch.equal(lo[finite].view(torch.int16), want[finite, 0].view(torch.int16))
    assert torch.equal(hi[finite].view(torch.int16), want[finite, 1].view(torch.int16))


@triton.jit
def _f16_kernel(src_ptr, dst_ptr, same_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    f16 = e4m3.e4m3_to_f16(tl.load(src_ptr + offs, mask=offs < n, other=0))
    tl.store(dst_ptr + offs, f16, mask=offs < n)
    tl.store(same_ptr + offs, e4m3.opaque_f16(f16), mask=offs < n)


@needs_hopper
def test_the_f16_conversion_is_the_cast_for_every_code():
    """e4m3_to_f16 (four codes a register, two conversions) gives each code's own fp16 (the
    packing keeps the order), and opaque_f16 hands its input back unchanged."""
    # 1,024 codes, every code once at each of a register's 4 slots, its neighbours different
    slots = (torch.arange(256)[:, None] + 67 * torch.arange(4)[None, :]) % 256
    codes = slots.to(torch.uint8).flatten().cuda()
    out = torch.empty(codes.numel(), dtype=torch.float16, device="cuda")
    same = torch.empty_like(out)
    _f16_kernel[(1,)](codes, out, same, codes.numel(), BLOCK=1024)
    want = codes.view(torch.float8_e4m3fn).to(torch.float16)
    finite = want.isfinite()
    assert torch.equal(out[finite].view(torch.int16), want[finite].view(torch.int16))
    assert torch.equal(same.view(torch.int16), out.view(torch.int16))


@needs_hopper
@pytest.mark.parametrize("m,scale_n,group_k", [(32, 1, 512), (7, 128, 128), (200, 1, 512)])
def test_the_fp8_gemm_reads_codes_alike_both_ways(m, scale_n, group_k, monkeypatch):
    """kernels.fp8_gemm with bf16 rows: the integer path gives Triton's cast path's bytes,
    and both are within bf16 rounding of the dequantized reference (split-K at 7 and 32); the
    OPAQUE form (the conversion declared impure) is within summation order of them."""
    from cormorant.kernels import fp8_gemm
    gen = torch.Generator(device="cuda").manual_seed(5)
    n, k = 384, 512
    w = (torch.randn(n, k, device="cuda", generator=gen) * 100).clamp(-448, 448)
    w = w.to(torch.float8_e4m3fn)
    s = torch.rand(-(-n // scale_n), -(-k // group_k), device="cuda", generator=gen) + 0.01
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    monkeypatch.setenv("CORMORANT_E4M3_CVT", "bits")
    bits = fp8_gemm.fp8_gemm(x, w, s, scale_n, group_k)
    monkeypatch.setenv("CORMORANT_E4M3_CVT", "hw")
    cast = fp8_gemm.fp8_gemm(x, w, s, scale_n, group_k)
    assert torch.equal(bits, cast)
    ref = fp8_gemm.fp8_matmul_ref(x, w, s, scale_n, group_k).float()
    assert ((bits.float() - ref).norm() / ref.norm()) < 1e-2
    # OPAQUE (16-bit dot layouts): the same products, summed in another order at most
    monkeypatch.setenv("CORMORANT_E4M3_CVT", "bits")
    config = fp8_gemm.gemm_config(m, n, k, group_k, s.shape[1] == 1, 132)
    opaque = fp8_gemm.fp8_gemm(x, w, s, scale_n, group_k, config=dict(config, OPAQUE=True))
    assert ((opaque.float() - bits.float()).norm() / bits.float().norm()) < 2e-3
