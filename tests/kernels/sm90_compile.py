"""Ahead-of-time compile of every kernel launch shape for an H100 (sm_90), without a GPU.

Run as a script (`python tests/kernels/sm90_compile.py [--full]`, TRITON_INTERPRET unset); the
test in test_kernels_compile.py runs it in a subprocess. The launchers in cormorant.kernels are
called with CPU tensors while their Triton kernels are swapped for recorders; each recorded
launch is then specialised exactly as JITFunction.run would (same binder, same _pack_args) and
compiled to a cubin for sm_90 with the ptxas bundled in Triton. This catches what the
interpreter cannot: type errors in loop-carried values, unsupported ops, shared memory over
the H100's 227 KiB. It uses Triton internals (create_function_from_signature, _pack_args),
checked to exist in 3.6 and 3.7; a mismatch exits with status 3 (the test skips).
Imports torch, triton and cormorant.kernels.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

MAX_SHARED = 227 * 1024  # H100 per-block shared memory limit (opt-in maximum)


class _Recorder:
    """Stands in for a JITFunction: `kernel[grid](*args, **kwargs)` records the launch."""

    def __init__(self, jit_fn, calls):
        self.jit_fn, self.calls = jit_fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.jit_fn, grid, args, kwargs))


def _record(launches):
    """Run each (label, thunk) with the kernel modules' kernels replaced by recorders."""
    from cormorant.kernels import (activation, fp8_gemm, fp8_quant, gemv, int4_mma, int_gemm,
                                   kv_cache, paged_attention, qk_prep, rmsnorm, rotary)
    modules = (activation, fp8_gemm, fp8_quant, gemv, int4_mma, int_gemm, kv_cache,
               paged_attention, qk_prep, rmsnorm, rotary)
    recorded = []
    originals = {}
    for module in modules:
        for name in dir(module):
            if name.endswith("_kernel") and hasattr(getattr(module, name), "params"):
                originals[(module, name)] = getattr(module, name)
    for label, thunk in launches:
        calls = []
        for (module, name), fn in originals.items():
            setattr(module, name, _Recorder(fn, calls))
        try:
            thunk()
        finally:
            for (module, name), fn in originals.items():
                setattr(module, name, fn)
        recorded += [(label, *call) for call in calls]
    return recorded


def _compile(jit_fn, args, kwargs, target):
    from triton import knobs
    from triton.compiler import ASTSource, compile, make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(target)
    kwargs = dict(kwargs, debug=False)
    mode = getattr(getattr(knobs, "compilation", None), "instrumentation_mode", None)
    if mode is not None:
        kwargs["instrumentation_mode"] = mode
    binder = create_function_from_signature(jit_fn.signature, jit_fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit_fn._pack_args(backend, kwargs, bound_args,
                                                              specialization, options)
    return compile(ASTSource(jit_fn, signature, constexprs, attrs), target=target,
                   options=options.__dict__)


def _assemble(ptx: str, sass: bool) -> tuple[str, str]:
    """One run of the bundled ptxas -v on the kernel: ('regs N, spill B', and with `sass`
    cuobjdump's SASS of the cubin); ('', '') where they cannot be run."""
    import triton
    bins = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        try:
            log = subprocess.run([os.path.join(bins, "ptxas"), "-arch=sm_90a", "-v", src,
                                  "-o", cubin], capture_output=True, text=True,
                                 timeout=120).stderr
            code = subprocess.run([os.path.join(bins, "cuobjdump"), "-sass", cubin],
                                  capture_output=True, text=True,
                                  timeout=120).stdout if sass else ""
        except (OSError, subprocess.SubprocessError):
            return "", ""
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    return (f"regs {regs.group(1) if regs else '?'}, spill {spill.group(1) if spill else '?'}B",
            code)


def _loop_profile(sass: str) -> str:
    """The SASS of the longest loop (the biggest backward branch): its instruction count and
    most common opcodes ('' without SASS). A per-iteration cost to compare kernel forms
    without a GPU (issue/latency, not time)."""
    import collections
    if not sass:
        return ""
    code = [(int(m.group(1), 16), m.group(2).split()) for m in
            re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]
    span = (0, 0)
    for addr, words in code:
        target = re.search(r"BRA (0x[0-9a-f]+)", " ".join(words))
        if target and int(target.group(1), 16) < addr and \
                addr - int(target.group(1), 16) > span[1] - span[0]:
            span = (int(target.group(1), 16), addr)
    ops = collections.Counter(
        (words[1] if words[0].startswith("@") else words[0]).split(".")[0]
        for addr, words in code if span[0] <= addr <= span[1] and span[1])
    return (f"loop {sum(ops.values())}: " + " ".join(f"{o} {n}" for o, n in ops.most_common(8))
            if ops else "no loop")


def _launches(full: bool):
    from cormorant.kernels import activation, kv_cache, paged_attention, rmsnorm, rotary
    models = [("qwen3-0.6b", 16, 8, 128), ("llama-8b", 32, 8, 128), ("smollm2", 9, 3, 64)]
    dtypes = [torch.bfloat16, torch.float32] if full else [torch.bfloat16]
    out = []
    for (name, heads, kv_heads, head_dim) in models:
        for dtype in dtypes:
            tag = f"{name} {str(dtype)[6:]}"
            # (query_lens, seq_len) per mode; the launch shape depends on these alone.
            for mode, q_lens in (("decode-split", [1] * 4), ("decode", [1] * 64),
                                 ("mixed", [1] * 8 + [100]), ("prefill", [512])):
                out.append((f"attn {mode} {tag}",
                            _attention_thunk(paged_attention, q_lens, heads, kv_heads, head_dim,
                                             dtype)))
    for dtype in dtypes:
        out += _small_kernel_thunks(rotary, rmsnorm, kv_cache, activation, dtype)
    out += _fp8_kv_thunks(paged_attention, kv_cache)
    out += _int_gemm_thunks()
    return out + _fp8_thunks() + _pdl_thunks(paged_attention, rmsnorm)


def _pdl_thunks(pa, rmsnorm):
    """A decode step's other kernels launched with PDL (kernels.pdl; CUDA sm_90+ only): the
    bf16 GEMV (skinny_gemm, one row), attention with its segment reduce, qk_prep, the norms,
    SiLU-and-multiply."""
    from cormorant.kernels import activation, gemv, pdl, qk_prep
    bf16, t = torch.bfloat16, 1
    x, w = torch.randn(t, 4096, dtype=bf16), torch.randn(4096, 4096, dtype=bf16)
    qkv = torch.randn(t, 48 * 128, dtype=bf16)
    q, k = qkv[:, :32 * 128].view(t, 32, 128), qkv[:, 32 * 128:40 * 128].view(t, 8, 128)
    v = qkv[:, 40 * 128:].view(t, 8, 128)
    cache = torch.empty(2, 4, 16, 8, 128, dtype=bf16)
    positions, norm = torch.zeros(t, dtype=torch.int64), torch.ones(128, dtype=bf16)
    thunks = [
        ("pdl skinny gemv", lambda: gemv.skinny_gemm(x, w)),
        ("pdl skinny gemv add_norm", lambda: gemv.add_rms_norm_gemm(x, x, w[0], 1e-6, w)),
        ("pdl attn decode-split llama-8b", _attention_thunk(pa, [1] * 4, 32, 8, 128, bf16)),
        ("pdl qk_prep", lambda: qk_prep.qk_prep(q, k, v, positions, torch.randn(64, 128), norm,
                                                norm, 1e-6, cache, positions)),
        ("pdl rms_norm", lambda: rmsnorm.rms_norm(x, w[0], 1e-6)),
        ("pdl add_rms_norm", lambda: rmsnorm.fused_add_rms_norm(x, x.clone(), w[0], 1e-6)),
        ("pdl silu_and_mul", lambda: activation.silu_and_mul(torch.randn(t, 2 * 14336,
                                                                         dtype=bf16))),
    ]
    return [(label, _patched(pdl, "enabled", lambda device: True, thunk))
            for label, thunk in thunks]


def _fp8_thunks():
    """FP8-weight GEMV (its default tiles, each prologue) and GEMM at Llama-8B sizes, with
    per-channel and 128 x 128 block scales."""
    from cormorant.kernels import e4m3, pdl
    from cormorant.kernels import fp8_gemm as f
    from cormorant.kernels import fp8_quant as q
    bf16 = torch.bfloat16
    w = torch.empty(6144, 4096, dtype=f.FP8_DTYPE)
    down = torch.empty(4096, 14336, dtype=f.FP8_DTYPE)
    row, blk = torch.ones(6144, 1), torch.ones(48, 32)
    x1, x256 = torch.randn(1, 4096, dtype=bf16), torch.randn(256, 4096, dtype=bf16)
    nw = torch.ones(4096, dtype=bf16)
    split = f.gemm_config(32, 6144, 4096, 4096, True, num_sms=132)  # an H100's split-K
    a8_64 = f.a8_config(64, 6144, 4096, 4096, True, num_sms=132)
    q256, s256 = torch.empty(256, 4096, dtype=f.FP8_DTYPE), torch.ones(256, 1)
    return [
        ("fp8 gemv", lambda: f.fp8_gemv(x1, w, row, 1, 4096)),
        ("fp8 gemv acc2d", lambda: f.fp8_gemv(x1, w, row, 1, 4096, config=dict(
            f.gemv_config(1, 4096, True), ACC2D=True))),
        ("fp8 gemv add_norm acc2d", lambda: f.fp8_add_rms_norm_gemv(
            x1, x1, nw, 1e-6, w, row, 1, 4096, config=dict(
                f.gemv_config(1, 4096, True, 1), ACC2D=True))),
        ("fp8 gemv blocks", lambda: f.fp8_gemv(x1, w, blk, 128, 128)),
        ("fp8 gemv pdl", _patched(pdl, "enabled", lambda device: True,
                                  lambda: f.fp8_gemv(x1, w, row, 1, 4096))),
        ("fp8 gemv silu pdl", _patched(pdl, "enabled", lambda device: True, lambda: (
            f.fp8_silu_mul_gemv(torch.randn(1, 2 * 14336, dtype=bf16), down,
                                torch.ones(4096, 1), 1, 14336)))),
        ("fp8 gemv add_norm", lambda: f.fp8_add_rms_norm_gemv(x1, x1, nw, 1e-6, w, row, 1,
                                                              4096)),
        ("fp8 gemv silu", lambda: f.fp8_silu_mul_gemv(torch.randn(1, 2 * 14336, dtype=bf16),
                                                      down, torch.ones(4096, 1), 1, 14336)),
        ("fp8 gemm", lambda: f.fp8_gemm(x256, w, row, 1, 4096)),
        ("fp8 quantize rows", lambda: q.quantize_rows(x256)),
        ("fp8 quantize rows static", lambda: q.quantize_rows(x256, torch.ones(1))),
        ("fp8 quantize rows K=14336", lambda: q.quantize_rows(torch.randn(4, 14336,
                                                                          dtype=bf16))),
        ("fp8 add_rms_norm_quantize", lambda: q.add_rms_norm_quantize(
            x256, x256.clone(), nw, 1e-6)),
        ("fp8 rms_norm_quantize static", lambda: q.add_rms_norm_quantize(
            x256, None, nw, 1e-6, torch.ones(1))),
        ("fp8 silu_mul_quantize", lambda: q.silu_mul_quantize(torch.randn(64, 2 * 14336,
                                                                          dtype=bf16))),
        ("fp8 quantize rows two passes", lambda: q.quantize_rows(torch.randn(4, 20000,
                                                                             dtype=bf16))),
        ("fp8 gemm M=32 split swap", _available_as(e4m3, True, lambda: f.fp8_gemm(
            x256[:32], w, row, 1, 4096, config=dict(split, SWAP=True)))),
        ("fp8 gemm blocks swap", _available_as(e4m3, True, lambda: f.fp8_gemm(
            x256[:64], w, blk, 128, 128, config=dict(f.gemm_config(64, 6144, 4096, 128, False,
                                                                   132), SWAP=True)))),
        ("fp8 gemm blocks", lambda: f.fp8_gemm(x256, w, blk, 128, 128)),
        ("fp8 gemm M=32 split", lambda: f.fp8_gemm(x256[:32], w, row, 1, 4096, config=split)),
        ("fp8 gemm M=32 split bits", _available_as(e4m3, True, lambda: f.fp8_gemm(
            x256[:32], w, row, 1, 4096, config=split))),
        ("fp8 gemm M=32 split bits opaque", _available_as(e4m3, True, lambda: f.fp8_gemm(
            x256[:32], w, row, 1, 4096, config=dict(split, OPAQUE=True)))),
        ("fp8 gemm blocks M=16 bits opaque", _available_as(e4m3, True, lambda: f.fp8_gemm(
            x256[:16], w, blk, 128, 128, config=dict(
                f.gemm_config(16, 6144, 4096, 128, False, 132), OPAQUE=True)))),
        ("fp8 gemm bits", _available_as(e4m3, True, lambda: f.fp8_gemm(x256, w, row, 1, 4096))),
        ("fp8 gemm blocks bits", _available_as(e4m3, True, lambda: f.fp8_gemm(
            x256, w, blk, 128, 128))),
        ("fp8 w8a8 M=256", lambda: f.fp8_scaled_gemm(q256, s256, w, row, 1, 4096)),
        ("fp8 w8a8 M=64 split", lambda: f.fp8_scaled_gemm(q256[:64], s256[:64], w, row, 1,
                                                          4096, config=a8_64)),
        ("fp8 w8a8 blocks", lambda: f.fp8_scaled_gemm(q256, s256, w, blk, 128, 128)),
        ("fp8 w8a8 M=16 swap", lambda: f.fp8_scaled_gemm(q256[:16], s256[:16], w, row, 1, 4096,
                                                         config=dict(a8_64, BLOCK_M=16,
                                                                     BLOCK_N=64, SWAP=True))),
        ("fp8 w8a8 fast acc", lambda: f.fp8_scaled_gemm(q256, s256, w, row, 1, 4096, config=dict(
            f.a8_config(256, 6144, 4096, 4096, True, 132), FAST_ACC=True))),
    ]


def _fp8_kv_thunks(pa, kv_cache):
    """The FP8 KV cache's variants (B1's Qwen3-0.6B attention, Llama-8B-sized writes)."""
    from cormorant.kernels import qk_prep
    from cormorant.kernels import e4m3
    out = []
    # Each way the dots read the codes (pa.CONVERSIONS; the integer-op ones are CUDA-only).
    for cvt in pa.CONVERSIONS:
        for mode, q_lens in (("decode-split", [1] * 4), ("decode", [1] * 64),
                             ("mixed", [1] * 8 + [100]), ("prefill", [512])):
            thunk = _attention_thunk(pa, q_lens, 16, 8, 128, torch.bfloat16,
                                     torch.float8_e4m3fn)
            thunk = _patched(pa, "inline_ptx", lambda t: True, thunk)
            out.append((f"attn {mode} qwen3-0.6b fp8kv {cvt}",
                        _env(("CORMORANT_KV_FP8_CVT", cvt), _available_as(e4m3, True, thunk))))
    t = 8
    qkv = torch.randn(t, 48 * 128, dtype=torch.bfloat16)
    q, k = qkv[:, :32 * 128].view(t, 32, 128), qkv[:, 32 * 128:40 * 128].view(t, 8, 128)
    v = qkv[:, 40 * 128:].view(t, 8, 128)
    cache = torch.empty(2, 4, 16, 8, 128, dtype=torch.float8_e4m3fn)
    positions, scale = torch.zeros(t, dtype=torch.int64), torch.ones(())
    norm = torch.ones(128, dtype=torch.bfloat16)
    return out + [
        ("store_kv fp8kv", lambda: kv_cache.store_kv_cache(k, v, cache, positions, scale, scale)),
        ("qk_prep fp8kv", lambda: qk_prep.qk_prep(q, k, v, positions, torch.randn(64, 128),
                                                  norm, norm, 1e-6, cache, positions,
                                                  scale, scale)),
    ]


def _env(pair: tuple[str, str], thunk):
    """thunk run with one environment variable set."""
    def run():
        old = os.environ.get(pair[0])
        os.environ[pair[0]] = pair[1]
        try:
            return thunk()
        finally:
            if old is None:
                del os.environ[pair[0]]
            else:
                os.environ[pair[0]] = old
    return run


def _available_as(module, value: bool, thunk):
    """thunk run with module.available answering `value` (a CUDA-only path, recorded here)."""
    return _patched(module, "available", lambda device: value, thunk)


def _patched(module, name: str, replacement, thunk):
    """thunk run with module.<name> replaced (a CUDA-only path, recorded here)."""
    def run():
        real = getattr(module, name)
        setattr(module, name, replacement)
        try:
            return thunk()
        finally:
            setattr(module, name, real)
    return run


def _small_kernel_thunks(rotary, rmsnorm, kv_cache, activation, dtype):
    """Llama-8B-sized launches of the small kernels (own scope: the lambdas run later)."""
    tag, t = str(dtype)[6:], 8
    x = torch.randn(t, 4096, dtype=dtype)
    w = torch.randn(4096, dtype=dtype)
    qkv = torch.randn(t, 48 * 128, dtype=dtype)
    q, k = qkv[:, :32 * 128].view(t, 32, 128), qkv[:, 32 * 128:40 * 128].view(t, 8, 128)
    v = qkv[:, 40 * 128:].view(t, 8, 128)
    cache = torch.empty(2, 4, 16, 8, 128, dtype=dtype)
    positions = torch.zeros(t, dtype=torch.int64)
    return [
        (f"store_kv {tag}", lambda: kv_cache.store_kv_cache(k, v, cache, positions)),
        (f"rms_norm {tag}", lambda: rmsnorm.rms_norm(x, w, 1e-6)),
        (f"rms_norm heads {tag}", lambda: rmsnorm.rms_norm(q, w[:128], 1e-6, out=q)),
        (f"add_rms_norm {tag}", lambda: rmsnorm.fused_add_rms_norm(x, x.clone(), w, 1e-6)),
        (f"rotary {tag}", lambda: rotary.rotary_embedding(positions, q, k,
                                                          torch.randn(64, 128))),
        (f"silu_and_mul {tag}", lambda: activation.silu_and_mul(
            torch.randn(t, 2 * 14336, dtype=dtype))),
    ]


def _attention_thunk(pa, query_lens, heads, kv_heads, head_dim, dtype, cache_dtype=None):
    num_seqs, num_tokens = len(query_lens), sum(query_lens)
    q = torch.randn(num_tokens, heads, head_dim, dtype=dtype)
    cache = torch.empty(2, 64, 16, kv_heads, head_dim, dtype=cache_dtype or dtype)
    scales = {} if cache_dtype is None else {"k_scale": torch.ones(()), "v_scale": torch.ones(())}
    starts = torch.tensor([0] + query_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    seq_lens = torch.full((num_seqs,), 600, dtype=torch.int32)
    tables = torch.zeros(num_seqs, 40, dtype=torch.int32)
    return lambda: pa.paged_attention(q, cache[0], cache[1], starts, seq_lens, tables,
                                      head_dim ** -0.5, max(query_lens), **scales)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="fp32 variants too")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--loop", action="store_true",
                        help="also profile each kernel's main loop in SASS (per iteration)")
    parser.add_argument("--only", action="append", default=[],
                        help="compile only the launches whose label contains this (repeatable)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: this compiles real kernels")
        return 2
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.runtime.jit import create_function_from_signature  # noqa: F401
    except ImportError as exc:
        print(f"triton internals unavailable: {exc}")
        return 3
    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    for label, jit_fn, grid, kargs, kwargs in _record(_launches(args.full)):
        if args.only and not any(part in label for part in args.only):
            continue
        start = time.time()
        try:
            kernel = _compile(jit_fn, kargs, kwargs, target)
        except Exception as exc:  # report every failing variant, then fail at the end
            failures += 1
            print(f"FAIL {label} [{jit_fn.__name__}]: {type(exc).__name__}: {exc}"[:2000])
            continue
        shared = kernel.metadata.shared
        too_big = shared > MAX_SHARED
        failures += too_big
        usage, sass = _assemble(kernel.asm["ptx"], args.loop)
        print(f"{'FAIL' if too_big else 'ok  '} {label:34s} {jit_fn.__name__:26s} "
              f"smem {shared / 1024:6.1f} KiB  {usage:22s} grid {grid}  "
              f"{time.time() - start:.1f}s")
        if args.loop:
            print(f"     {_loop_profile(sass)}")
    print("all compiled" if not failures else f"{failures} failure(s)")
    return 1 if failures else 0


def _int_gemm_thunks():
    """Llama-8B o_proj-sized int4/int8 weight-only GEMMs: int4_mma (bf16 and fp16, its 8- and
    4-warp settings, x padded to 16, 64 rows); one row (the GEMV kernel, four and one K tiles
    a step, fp32 and packed bf16 sums), 16 and 256 rows (the tile kernel; at 256 also the
    dequantization), symmetric (no zeros) and asymmetric."""
    from cormorant.kernels import int4_mma, int_gemm, pdl, split_k
    out = []
    bf16 = torch.bfloat16
    for dtype, zeros, m, n in ((bf16, False, 16, 4096), (bf16, True, 2, 4096),
                               (bf16, False, 16, 28672), (torch.float16, True, 8, 4096),
                               (bf16, True, 33, 4096), (bf16, False, 64, 28672)):
        q = torch.zeros(512, n, dtype=torch.int32)  # K 4096
        s = torch.ones(32, n, dtype=dtype)
        z = s.clone() if zeros else None
        x = torch.randn(m, 4096, dtype=dtype)
        out.append((f"int4 mma M={m} N={n} {dtype}{' zeros' if zeros else ''}", _patched(
            split_k, "inline_ptx", lambda device: True,
            lambda x=x, q=q, s=s, z=z, m=m, n=n: int4_mma.int4_mma(
                x, q, s, z, 128, config=int4_mma.config_for(m, n, 4096, 128, 132)))))
    for bits, zeros, rows in ((4, False, (1, 16, 256)), (4, True, (1, 256)), (8, False, (1,))):
        q = torch.zeros(4096 * bits // 32, 4096, dtype=torch.int32)
        s = torch.ones(32, 4096, dtype=torch.bfloat16)
        z = s.clone() if zeros else None
        for m in rows:
            x = torch.randn(m, 4096, dtype=torch.bfloat16)
            label = f"int{bits} gemm M={m}{' zeros' if zeros else ''}"
            cfg = int_gemm.config_for(m, 4096, 4096, 128, num_sms=132)  # an H100's splits
            out.append((label, lambda x=x, q=q, s=s, z=z, bits=bits, cfg=cfg:
                        int_gemm.int_gemm(x, q, s, z, bits, 128, config=cfg)))
            if m == 1 and not zeros:  # the GEMV with one K tile a loop step
                out.append((label + " gemv SUB=1", lambda x=x, q=q, s=s, bits=bits, cfg=cfg:
                            int_gemm.int_gemm(x, q, s, None, bits, 128, config=dict(
                                cfg, SUB=1, K_PER_SPLIT=512, SPLIT_K=8))))
            if m == 1:  # codes made floats by bits, masked in place by inline PTX (CUDA)
                out.append((label + " magic ptx", _patched(
                    split_k, "inline_ptx", lambda device: True,
                    lambda x=x, q=q, s=s, z=z, bits=bits, cfg=cfg: int_gemm.int_gemm(
                        x, q, s, z, bits, 128, config=dict(cfg, MAGIC=True, PACKED=False)))))
            if m == 1 and bits == 4:  # int4's default on CUDA: products summed in packed bf16
                out.append((label + " packed ptx", _patched(
                    split_k, "inline_ptx", lambda device: True,
                    lambda x=x, q=q, s=s, z=z, cfg=cfg: int_gemm.int_gemm(
                        x, q, s, z, 4, 128, config=dict(cfg, PACKED=True)))))
            if m == 1:  # launched with PDL: the first step's words prefetched to L2
                out.append((label + " pdl", _patched(
                    pdl, "enabled", lambda device: True,
                    lambda x=x, q=q, s=s, z=z, bits=bits, cfg=cfg: int_gemm.int_gemm(
                        x, q, s, z, bits, 128, config=cfg))))
            if m == 1:  # the GEMV with the norm / SiLU folded in
                nw = torch.ones(4096, dtype=torch.bfloat16)
                out.append((label + " add_norm", lambda x=x, q=q, s=s, z=z, bits=bits, nw=nw:
                            int_gemm.int_add_rms_norm_gemv(x, x, nw, 1e-6, q, s, z, bits,
                                                           128)))
                out.append((label + " silu", lambda q=q, s=s, z=z, bits=bits:
                            int_gemm.int_silu_mul_gemv(
                                torch.randn(1, 8192, dtype=torch.bfloat16), q, s, z, bits,
                                128)))
            if m == 256:  # the many-rows path's dequantization (cuBLAS does the matmul)
                out.append((label + " dequant", lambda q=q, s=s, z=z, bits=bits:
                            int_gemm.int_dequant(q, s, z, bits, 128, torch.bfloat16)))
    return out


if __name__ == "__main__":
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    sys.exit(main())

