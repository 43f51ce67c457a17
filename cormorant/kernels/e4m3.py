"""e4m3 (float8_e4m3fn) codes to bf16 by integer ops, for kernels that read FP8 data on Hopper.

Triton's fp8 -> bf16 cast lowers to conversion instructions (cvt from e4m3x2 to f16x2, then on
to bf16), which run at a sixteenth of the FMA rate per SM: a kernel that reads FP8 at memory
speed (the FP8 KV cache in paged attention) may be bound by them. Here, per pair of codes, a
byte permute, a shift and two masks build the bf16 whose bits are the code's sign, exponent
field 0000eeee and mantissa mmm0000 -- the code's value times 2^-120 (subnormal codes become
bf16 subnormals, also times 2^-120) -- and one bf16x2 multiply by 2^120 makes it the code's
value exactly. Five instructions per two codes, equal to `x.to(tl.bfloat16)` bit for bit
(NaN codes aside: they come out finite). On by default on sm_90+: tests/kernels/test_e4m3.py
passed on an H100 (2026-12-07: every code equal to the cast, paged attention over an FP8
cache and the W8A16 GEMM byte-identical both ways), and B1 with an FP8 KV cache went from
0.92x to 1.08x the bf16 cache's tok/s. CORMORANT_E4M3_CVT=hw keeps Triton's casts (A/B).

`e4m3_to_f16_scaled(codes)` is the same for fp16 dots, one multiply cheaper: the bits alone
make fp16 of the value times 2^-8, and the caller folds 2^8 into a scale.

`e4m3_to_f16(codes)` is the hardware conversion to fp16 for tensor-core operands (inline PTX,
declared impure so that Triton lays the dots out for 16-bit data; see its docstring);
`e4m3x2_to_f16x2` the same for codes read as uint16 pairs.

`e4m3_to_bf16(codes)` takes the codes loaded as uint8 (view the tensor as torch.uint8) and
needs CUDA sm_90+ (inline PTX: `mul.bf16x2`); `available(device)` says where it runs (not
under the CPU interpreter). `bits_ref` is the same bit construction in PyTorch, for tests.
Imports only torch and triton.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

def _ptx(shift: int, mask: str, scale: str = "") -> str:
    """Four codes in $2 -> two 16-bit pairs in $0, $1: per half h = c << 8 (prmt 0x1404 makes
    bytes [0, c0, 0, c1], c0 the high byte of the low half; 0x3424 the same for c2, c3),
    (h >> shift) & mask places c's eeeemmm in the target's exponent-low-bits and mantissa,
    h & 0x8000 its sign; then, if given, a multiply by `scale` (a 16-bit pair's bits)."""
    lines = ["{", ".reg .b32 a, b, z, c;", "mov.b32 z, 0;", "prmt.b32 a, $2, z, 0x1404;",
             "prmt.b32 b, $2, z, 0x3424;"]
    for out, reg in (("$0", "a"), ("$1", "b")):
        lines += [f"shr.b32 {out}, {reg}, {shift};", f"and.b32 {out}, {out}, {mask};",
                  f"and.b32 {reg}, {reg}, 0x80008000;", f"or.b32 {out}, {out}, {reg};"]
        if scale:
            lines += [f"mov.b32 c, {scale};", f"mul.rn.bf16x2 {out}, {out}, c;"]
    return "\n".join(lines + ["}"])


# bf16: the code's value times 2^-120 (its exponent field lands as is), times 2^120 (0x7B80).
_ASM = tl.constexpr(_ptx(4, "0x07F007F0", "0x7B807B80"))
# fp16: the code's value times 2^-8 (subnormals too), no multiply: the caller folds 2^8 into
# a scale it applies anyway.
_ASM_F16 = tl.constexpr(_ptx(1, "0x3F803F80"))


@triton.jit
def e4m3_to_bf16(codes, OPAQUE: tl.constexpr = False):
    """e4m3 codes (a uint8 tensor) -> bf16 values, exact (see the module docstring). OPAQUE:
    declared impure, so that a dot fed by it is laid out for 16-bit data (e4m3_to_f16)."""
    return tl.inline_asm_elementwise(_ASM, "=r,=r,r", [codes], dtype=tl.bfloat16,
                                     is_pure=not OPAQUE, pack=4)


@triton.jit
def e4m3_to_f16_scaled(codes):
    """e4m3 codes (a uint8 tensor) -> fp16 values times 2^-8, exact (every e4m3 value times
    2^-8 is an fp16 value, the subnormal codes included); the caller multiplies by 2^8."""
    return tl.inline_asm_elementwise(_ASM_F16, "=r,=r,r", [codes], dtype=tl.float16,
                                     is_pure=True, pack=4)


@triton.jit
def e4m3x2_to_f16x2(pairs):
    """uint16 pairs of e4m3 codes -> (fp16 of the low byte's code, fp16 of the high byte's),
    exact: one hardware conversion per pair (cvt.rn.f16x2.e4m3x2, sm_89+; inline PTX, so not
    under the interpreter)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b32 r; cvt.rn.f16x2.e4m3x2 r, $2; mov.b32 {$0, $1}, r; }", "=h,=h,h",
        [pairs], dtype=(tl.float16, tl.float16), is_pure=True, pack=1)


@triton.jit
def e4m3_to_f16(codes):
    """e4m3 codes (a uint8 or fp8 tensor) -> fp16 values, exact: two hardware conversions
    per four codes (cvt.rn.f16x2.e4m3x2, sm_89+; inline PTX, so not under the interpreter).

    Declared impure on purpose: Triton picks a dot's operand layout (kWidth) from the
    narrowest load it can trace back through pure elementwise ops. Seeing the 8-bit codes,
    it gives both operands of an mma-v2 dot four elements of K per thread, and the other
    operand (the attention's queries) is then reloaded every iteration with 64-bit shared
    loads and register moves (sm_90: 120 moves a tile). The impure conversion hides the codes:
    16-bit layouts, ldmatrix for both operands (kernels.paged_attention, CVT_F16_CAST)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2.e4m3x2 $0, lo; "
        "cvt.rn.f16x2.e4m3x2 $1, hi; }", "=r,=r,r", [codes], dtype=tl.float16,
        is_pure=False, pack=4)


@triton.jit
def opaque_f16(x):
    """x (fp16), unchanged, behind an impure no-op that Triton's dot-layout choice cannot see
    through (e4m3_to_f16 says why): for a dot operand built by tl.join, whose presence makes
    Triton halve its guess of the loaded width. ptxas removes the move."""
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float16,
                                     is_pure=False, pack=2)


def available(device: torch.device) -> bool:
    """Whether e4m3_to_bf16 runs for tensors on `device`: CUDA sm_90+, not interpreted, not
    switched off (CORMORANT_E4M3_CVT=hw)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if os.environ.get("CORMORANT_E4M3_CVT", "bits") != "bits":
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


def bits_ref(codes: torch.Tensor) -> torch.Tensor:
    """The construction in PyTorch: uint8 codes -> bf16 of the value times 2^-120 (before the
    multiply by 2^120)."""
    c = codes.to(torch.int32)
    h = ((c << 8) >> 4) & 0x07F0 | (c << 8) & 0x8000
    return h.to(torch.int16).view(torch.bfloat16)


def f16_bits_ref(codes: torch.Tensor) -> torch.Tensor:
    """e4m3_to_f16_scaled's construction in PyTorch: uint8 codes -> fp16 of the value times
    2^-8."""
    h = codes.to(torch.int32) << 8
    return ((h >> 1) & 0x3F80 | h & 0x8000).to(torch.int16).view(torch.float16)
