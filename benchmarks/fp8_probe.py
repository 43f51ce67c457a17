"""FP8 matmul probe: which path is faster for FP8 weights on Llama-3.1-8B shapes, and is it right.

For each projection (qkv, o, gate_up, down) and rows M (1 .. 4096) it times, in microseconds:
  bf16        cuBLAS on the bf16 weight (the baseline the FP8 paths must beat);
  gemv        kernels.fp8_gemm.fp8_gemv, per-channel scales (M <= 16);
  gemm        kernels.fp8_gemm.fp8_gemm, per-channel scales (Triton, bf16 tensor cores);
  scaled_mm   layers.fp8_linear.scaled_mm: per-token activation quantization + torch._scaled_mm
              (FP8 tensor cores, rowwise scales; sm89+);
  a8          per-token activation quantization + kernels.fp8_gemm.fp8_scaled_gemm (W8A8
              Triton tiles on FP8 tensor cores, split-K; layers.fp8_linear's FP8_A8_MAX_ROWS);
  blk_gemv / blk_gemm / blk_a8  the same kernels with 128 x 128 block scales (quant_method "fp8").
Each path's output is first checked against its fp32 reference (relative error, printed as
err; activations quantized to FP8 make scaled_mm's ~3e-2, the weight-only paths ~1e-2 of bf16
rounding). Times as benchmarks/gemv_probe.py makes them: cold weights (copies that overflow
L2), calls captured in a CUDA graph, median of 5 replays. GB/s counts weight bytes; the
decision it informs is layers.fp8_linear's FP8_GEMV_MAX_ROWS and the _scaled_mm / Triton split.
One command on the GPU machine, from the repository root:
    python benchmarks/fp8_probe.py [--ms 1,2,4,16,64,256,1024,4096] [--sweep] [--sweep-a8]
                                   [--sweep-acc2d] [--sweep-w8a16] [--opaque] [--fast-acc]
                                   [--swap-smm] [--out FILE]
(--sweep: the M = 1 GEMV's launch settings, plain and with the add + RMSNorm prologue;
 --sweep-a8: the W8A8 GEMM's tiles, plain and transposed (SWAP), at the --ms rows, against
   its defaults and _scaled_mm;
 --sweep-w8a16: the W8A16 GEMM's tiles, plain and transposed (SWAP), at 8-128 rows;
 --opaque: the W8A16 tiles at their defaults with OPAQUE (kernels.fp8_gemm) off and on, at
   the --ms rows;
 --swap-smm: torch._scaled_mm with its operands swapped (y^T = W @ xq^T), at the --ms rows
   (H100, 2026-12-07: 1.5-2.7x slower than the default order at 64 and 128 rows);
 --fast-acc: FP8 tensor cores accumulating all of K (cuBLAS's use_fast_accum, Triton's
   FAST_ACC) against summing each K step in fp32, time and error, at the --ms rows;
 --sweep-acc2d: the M = 1 GEMV with its products reduced once (ACC2D), plain and with the
 projection's prologue, against the default.)
On the CPU it runs tiny shapes under TRITON_INTERPRET=1 as a smoke test (times meaningless).
Imports torch, triton and cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from benchmarks.gemv_probe import cpu_time_us, graph_time_us  # noqa: E402
from cormorant.kernels.fp8_gemm import (a8_config, fp8_add_rms_norm_gemv,  # noqa: E402
                                        fp8_gemm, fp8_gemv, fp8_matmul_ref, fp8_scaled_gemm,
                                        fp8_scaled_gemm_ref, fp8_silu_mul_gemv, gemm_config,
                                        gemv_config)
from cormorant.kernels.gemv import (PROLOGUE_ADD_NORM, PROLOGUE_NONE,  # noqa: E402
                                    PROLOGUE_SILU_MUL)
from cormorant.layers.fp8_linear import (quantize_rows, scaled_mm, scaled_mm_ref,  # noqa: E402
                                         scaled_mm_rowwise)

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}
TINY = {"qkv": (96, 64), "down": (64, 160)}
BLOCK = 128


def block_scales(w: torch.Tensor, bn: int, bk: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = w.shape
    blocks = w.float().reshape(n // bn, bn, k // bk, bk)
    scale = (blocks.abs().amax(dim=(1, 3)) / 448).clamp(min=1e-12)
    codes = (blocks / scale[:, None, :, None]).clamp(-448, 448).reshape(n, k)
    return codes.to(torch.float8_e4m3fn), scale


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


def a8(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, scale_n: int, group_k: int | None,
       config: dict | None = None) -> torch.Tensor:
    """What layers.fp8_linear.w8a8_gemm runs (group_k None: per row), the activations
    quantized by the PyTorch quantizer: on the GPU its codes equal the kernel's bit for bit
    (test_fp8_gemm), and on the CPU it avoids the interpreter's e4m3 cast (see that test)."""
    xq, xs = quantize_rows(x)
    return fp8_scaled_gemm(xq, xs, q, s, scale_n, group_k or x.shape[1], out_dtype=x.dtype,
                           config=config)


def paths(m: int, cuda: bool, bk: int) -> dict:
    """name -> (fn(x, weights_i) -> y, reference fn(x, weights_0) -> y) for rows m."""
    out = {}
    if m <= 16:
        out["gemv"] = (lambda x, w: fp8_gemv(x, w["q"], w["s"], 1, x.shape[1]),
                       lambda x, w: fp8_matmul_ref(x, w["q"], w["s"], 1, x.shape[1]))
        out["blk_gemv"] = (lambda x, w: fp8_gemv(x, w["bq"], w["bs"], bk, bk),
                           lambda x, w: fp8_matmul_ref(x, w["bq"], w["bs"], bk, bk))
    out["gemm"] = (lambda x, w: fp8_gemm(x, w["q"], w["s"], 1, x.shape[1]),
                   lambda x, w: fp8_matmul_ref(x, w["q"], w["s"], 1, x.shape[1]))
    out["blk_gemm"] = (lambda x, w: fp8_gemm(x, w["bq"], w["bs"], bk, bk),
                       lambda x, w: fp8_matmul_ref(x, w["bq"], w["bs"], bk, bk))
    for tag, q, s, sn, gk in (("a8", "q", "s", 1, None), ("blk_a8", "bq", "bs", bk, bk)):
        out[tag] = (lambda x, w, q=q, s=s, sn=sn, gk=gk: a8(x, w[q], w[s], sn, gk),
                    lambda x, w, q=q, s=s, sn=sn, gk=gk: fp8_matmul_ref(
                        x, w[q], w[s], sn, gk or x.shape[1]))
    if cuda and scaled_mm_rowwise(torch.empty(1, device="cuda", dtype=torch.bfloat16)):
        out["scaled_mm"] = (lambda x, w: scaled_mm(x, w["q"], w["s"], None, None),
                            lambda x, w: scaled_mm_ref(x, w["q"], w["s"], None, None))
    return out


def probe_shape(name: str, n: int, k: int, ms: list[int], cuda: bool) -> list[dict]:
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    bk = BLOCK if cuda else 32
    timer = graph_time_us if cuda else cpu_time_us
    gen = torch.Generator(device=device).manual_seed(0)
    copies = max(1, min(16, -(-256 * 2**20 // (n * k)))) if cuda else 1
    weights = []
    for _ in range(copies):
        w = torch.randn(n, k, device=device, generator=gen) * 0.02
        q, s = quantize_rows(w)
        bq, bs = block_scales(w, bk, bk)
        weights.append(dict(w=w.to(dtype), q=q, s=s.contiguous(), bq=bq, bs=bs))
    rows = []
    for m in ms:
        x = torch.randn(m, k, device=device, generator=gen).to(dtype)
        row = {"shape": name, "N": n, "K": k, "M": m,
               "bf16_us": timer(lambda i: x @ weights[i]["w"].t(), copies)}
        for path, (fn, ref) in paths(m, cuda, bk).items():
            row[f"{path}_err"] = rel_err(fn(x, weights[0]), ref(x, weights[0]))
            row[f"{path}_us"] = timer(lambda i, fn=fn: fn(x, weights[i]), copies)
            row[f"{path}_GBps"] = n * k / row[f"{path}_us"] / 1e3
        rows.append(row)
        print(" | ".join(f"{key} {val:.3g}" if isinstance(val, float) else f"{key} {val}"
                         for key, val in row.items()), flush=True)
    return rows


def _cold_weights(n: int, k: int, seed: int) -> tuple[torch.Generator, int, list]:
    """A seeded CUDA generator, and enough (codes, per-row scales) copies of a random [n, k]
    weight to overflow the L2, as the probe times them."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    copies = max(1, min(16, -(-256 * 2**20 // (n * k))))
    return gen, copies, [quantize_rows(torch.randn(n, k, device="cuda", generator=gen) * 0.02)
                         for _ in range(copies)]


def _splits(k: int, tiles: int, least_steps: int) -> list[dict]:
    """K splits of 128-wide steps to try for `tiles` output tiles: none, and about one and two
    programs per SM, each split at least least_steps steps long."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    k_tiles = -(-k // 128)
    out = []
    for split in sorted({1, max(1, min(k_tiles // least_steps, -(-sms // tiles))),
                         max(1, min(k_tiles // least_steps, -(-2 * sms // tiles)))}):
        per = -(-k_tiles // split) * 128
        out.append(dict(SPLIT_K=-(-k // per), K_PER_SPLIT=per))
    return out


SWEEP = [(bn, bk, w, st) for bn in (1, 2, 4, 8) for bk in (1024, 2048, 4096)
         for w in (2, 4, 8) for st in (2, 4)]


def sweep_gemv(name: str, n: int, k: int) -> dict:
    """M = 1: the fastest GEMV settings, plain and with the add + RMSNorm prologue (the
    defaults are kernels.gemv's bf16 ones; FP8 rows are half the bytes)."""
    gen, copies, ws = _cold_weights(n, k, 1)
    x = torch.randn(1, k, device="cuda", generator=gen).to(torch.bfloat16)
    nw = torch.ones(k, device="cuda", dtype=torch.bfloat16)
    best = {}
    for kind in ("plain", "add_norm"):
        times = []
        for bn, bk, warps, stages in SWEEP:
            cfg = dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=min(bk, 1 << (k - 1).bit_length()),
                       num_warps=warps, num_stages=stages)
            if kind == "plain":
                fn = lambda i, cfg=cfg: fp8_gemv(x, ws[i][0], ws[i][1], 1, k, config=cfg)
            else:
                fn = lambda i, cfg=cfg: fp8_add_rms_norm_gemv(x, x, nw, 1e-6, ws[i][0], ws[i][1],
                                                              1, k, config=cfg)
            try:
                times.append((graph_time_us(fn, copies), cfg))
            except Exception as e:  # noqa: BLE001 - a setting that does not compile
                print("skip", cfg, type(e).__name__, flush=True)
        t, cfg = min(times, key=lambda tc: tc[0])
        best[kind] = {"us": t, "GBps": n * k / t / 1e3, "config": cfg}
    print("sweep", name, json.dumps(best), flush=True)
    return best


ACC_SWEEP = [(bn, bk, w, st) for bn in (2, 4, 8) for bk in (1024, 2048) for w in (4, 8)
             for st in (2, 4)]


def sweep_acc2d(name: str, n: int, k: int) -> dict:
    """M = 1, per-row scales: the GEMV accumulating [BLOCK_N, BLOCK_K] products elementwise
    (ACC2D, one reduction at the end) against the default (one reduction per K step), plain
    and with the projection's prologue (add + RMSNorm for K = 4096, SiLU for down)."""
    gen, copies, ws = _cold_weights(n, k, 1)
    x = torch.randn(1, k, device="cuda", generator=gen).to(torch.bfloat16)
    gate_up = torch.randn(1, 2 * k, device="cuda", generator=gen).to(torch.bfloat16)
    nw = torch.ones(k, device="cuda", dtype=torch.bfloat16)
    out = {}
    for kind in ("plain", "add_norm" if k == 4096 else "silu"):
        prologue = {"plain": PROLOGUE_NONE, "add_norm": PROLOGUE_ADD_NORM,
                    "silu": PROLOGUE_SILU_MUL}[kind]
        default = gemv_config(1, k, True, prologue)
        cfgs = [dict(default, ACC2D=False), dict(default, ACC2D=True)] + [
            dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=st, ACC2D=True)
            for bn, bk, w, st in ACC_SWEEP]
        times = []
        for cfg in cfgs:
            if kind == "plain":
                fn = lambda i, cfg=cfg: fp8_gemv(x, ws[i][0], ws[i][1], 1, k, config=cfg)
            elif kind == "add_norm":
                fn = lambda i, cfg=cfg: fp8_add_rms_norm_gemv(x, x, nw, 1e-6, ws[i][0], ws[i][1],
                                                              1, k, config=cfg)
            else:
                fn = lambda i, cfg=cfg: fp8_silu_mul_gemv(gate_up, ws[i][0], ws[i][1], 1, k,
                                                          config=cfg)
            try:
                times.append((graph_time_us(fn, copies), cfg))
            except Exception as e:  # noqa: BLE001 - a setting that does not compile
                print("skip", cfg, type(e).__name__, flush=True)
        best_t, best_cfg = min(times[2:], key=lambda tc: tc[0])
        out[kind] = {"default_us": times[0][0], "default_acc2d_us": times[1][0],
                     "best_acc2d_us": best_t, "best_acc2d": best_cfg,
                     "GBps_default": n * k / times[0][0] / 1e3,
                     "GBps_best": n * k / best_t / 1e3}
    print("sweep_acc2d", name, json.dumps(out), flush=True)
    return out


def _sweep_row(name: str, m: int, k: int, gen: torch.Generator, ws: list, copies: int,
               default: dict, run) -> tuple[torch.Tensor, dict]:
    """m random bf16 rows, and a sweep's row: run(x, (codes, scales)) at its default tiles
    and _scaled_mm, timed."""
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
    return x, {"shape": name, "M": m, "default": default,
               "default_us": graph_time_us(lambda i: run(x, ws[i]), copies),
               "scaled_mm_us": graph_time_us(
                   lambda i: scaled_mm(x, ws[i][0], ws[i][1], None, None), copies)}


def _try_time(fn, copies: int, cfg: dict, check=None) -> float | None:
    """graph_time_us(fn) of one sweep setting; None where it does not compile or launch, -1.0
    where check() says its result is wrong."""
    try:
        if check is not None and not check():
            print("WRONG", cfg, flush=True)
            return -1.0
        return graph_time_us(fn, copies)
    except Exception as e:  # noqa: BLE001 - a setting that does not fit
        print("skip", cfg, type(e).__name__, flush=True)
        return None


def _sweep_tiles(row: dict, n: int, k: int, copies: int, grid: list, least_steps: int,
                 run, ok) -> None:
    """Times run(i, cfg) for each (SWAP, BLOCK_M, BLOCK_N, stages, warps) of grid and each K
    split (_splits) around row["default"], each setting checked by ok(cfg) first; the
    fastest, the fastest transposed and how many were wrong go into row."""
    times, wrong = [], 0
    for swap, bm, bn, stages, warps in grid:
        for split in _splits(k, -(-row["M"] // bm) * -(-n // bn), least_steps):
            cfg = dict(row["default"], BLOCK_M=bm, BLOCK_N=bn, num_stages=stages,
                       num_warps=warps, SWAP=swap, **split)
            t = _try_time(lambda i, c=cfg: run(i, dict(c)), copies, cfg,
                          lambda c=cfg: ok(dict(c)))
            if t is None or t < 0:
                wrong += t is not None
                continue
            times.append((t, cfg))
    t, cfg = min(times, key=lambda tc: tc[0])
    t_swap, cfg_swap = min((tc for tc in times if tc[1]["SWAP"]), key=lambda tc: tc[0])
    row.update(best_us=t, best=cfg, best_GBps=n * k / t / 1e3, best_swap_us=t_swap,
               best_swap=cfg_swap, wrong=wrong)


def sweep_a8(name: str, n: int, k: int, ms: tuple[int, ...] = (16, 32, 128)) -> list[dict]:
    """The W8A8 GEMM's tiles per rows: plain and transposed (SWAP) tiles, BLOCK_M, BLOCK_N,
    stages, warps and K splits (none, about one and two programs per SM) around a8_config's,
    each checked against the W8A8 reference before it is timed; _scaled_mm beside it."""
    gen, copies, ws = _cold_weights(n, k, 2)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = []
    for m in ms:
        x, row = _sweep_row(name, m, k, gen, ws, copies, a8_config(m, n, k, k, True, sms),
                            lambda x, w: a8(x, *w, 1, k))
        xq, xs = quantize_rows(x)
        ref = fp8_scaled_gemm_ref(xq, xs, ws[0][0], ws[0][1], 1, k, out_dtype=torch.float32)
        fit = max(16, 1 << (m - 1).bit_length())
        # plain tiles: a wgmma's M side (the rows) is 64 at least; transposed: the rows are
        # its N side (16 at least) and the weights its M side
        plain = [(False, bm, bn, st, w) for bm in sorted({max(64, min(fit, 128)),
                                                          64 if m > 64 else fit})
                 for bn in (64, 128) for st, w in ((3, 4), (4, 4), (4, 8))]
        swapped = [(True, bm, bn, st, w) for bm in sorted({min(fit, 64), min(fit, 128)})
                   for bn in (64, 128, 256) for st, w in ((3, 4), (4, 4), (6, 4))]
        _sweep_tiles(row, n, k, copies, plain + swapped, 2,
                     lambda i, c: a8(x, *ws[i], 1, k, c),
                     lambda c: rel_err(a8(x, *ws[0], 1, k, c), ref) < 4e-3)
        print("sweep_a8", json.dumps(row), flush=True)
        out.append(row)
    return out


def sweep_w8a16(name: str, n: int, k: int, ms: tuple[int, ...] = (8, 16, 32, 64, 128)
                ) -> list[dict]:
    """The W8A16 GEMM's tiles per rows (per-channel scales): plain and transposed (SWAP)
    tiles, BLOCK_N, stages and K splits (none, about one and two programs per SM) around
    gemm_config's, each checked against the reference before it is timed; _scaled_mm beside."""
    gen, copies, ws = _cold_weights(n, k, 3)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = []
    for m in ms:
        x, row = _sweep_row(name, m, k, gen, ws, copies, gemm_config(m, n, k, k, True, sms),
                            lambda x, w: fp8_gemm(x, *w, 1, k))
        ref = fp8_matmul_ref(x, ws[0][0], ws[0][1], 1, k)
        fit = max(16, 1 << (m - 1).bit_length())
        grid = [(swap, bm, bn, st, w) for swap in (False, True)
                for bm in sorted({min(fit, 64 if not swap else 128), min(fit, 64)})
                for bn in (64, 128) for st, w in ((3, 4), (4, 4), (4, 8))
                if not (w == 8 and bn == 64)]
        _sweep_tiles(row, n, k, copies, grid, 4,
                     lambda i, c: fp8_gemm(x, *ws[i], 1, k, config=c),
                     lambda c: rel_err(fp8_gemm(x, *ws[0], 1, k, config=c), ref) < 1e-2)
        print("sweep_w8a16", json.dumps(row), flush=True)
        out.append(row)
    return out


def probe_opaque(name: str, n: int, k: int, ms: tuple[int, ...]) -> list[dict]:
    """The W8A16 tiles at gemm_config's settings with the codes' conversion pure (default)
    and declared impure (OPAQUE: 16-bit dot layouts), per-channel scales; each checked
    against the reference first, and the two against each other."""
    gen, copies, ws = _cold_weights(n, k, 6)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
        ref = fp8_matmul_ref(x, ws[0][0], ws[0][1], 1, k)
        cfg = gemm_config(m, n, k, k, True, sms)
        row = {"shape": name, "M": m, "config": cfg}
        outs = {}
        for tag, opaque in (("pure", False), ("opaque", True)):
            c = dict(cfg, OPAQUE=opaque)
            outs[tag] = fp8_gemm(x, *ws[0], 1, k, config=dict(c)).float()
            row[f"{tag}_err"] = rel_err(outs[tag], ref)
            row[f"{tag}_us"] = _try_time(lambda i, c=c: fp8_gemm(x, *ws[i], 1, k, config=dict(c)),
                                         copies, c)
        row["opaque_vs_pure_max_abs"] = float((outs["opaque"] - outs["pure"]).abs().max())
        print("opaque", json.dumps(row), flush=True)
        out.append(row)
    return out


def probe_fast_acc(name: str, n: int, k: int, ms: tuple[int, ...]) -> list[dict]:
    """What accumulating all of K in the FP8 tensor cores' adders buys and costs: time and
    error (against the W8A8 reference, fp32) of _scaled_mm with and without use_fast_accum,
    and of the Triton W8A8 tiles (the sweep's best small tiles, and a8_config's) with each K
    step summed in fp32 and with FAST_ACC; the W8A16 tiles beside them."""
    gen, copies, ws = _cold_weights(n, k, 4)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
        xq, xs = quantize_rows(x)
        ref = fp8_scaled_gemm_ref(xq, xs, ws[0][0], ws[0][1], 1, k, out_dtype=torch.float32)
        fit = max(16, 1 << (m - 1).bit_length())
        small = dict(BLOCK_M=min(fit, 64), BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4,
                     num_stages=6, SWAP=True)
        tiles = a8_config(m, n, k, k, True, sms)

        def smm(i, fast):
            q, s = quantize_rows(x)
            return torch._scaled_mm(q, ws[i][0].t(), scale_a=s, scale_b=ws[i][1].view(1, -1),
                                    out_dtype=torch.bfloat16, use_fast_accum=fast)
        runs = {"w8a16": lambda i: fp8_gemm(x, *ws[i], 1, k),
                "scaled_mm": lambda i: smm(i, False), "scaled_mm_fast": lambda i: smm(i, True)}
        for tag, cfg in (("a8_small", small), ("a8_tiles", tiles)):
            for fast in (False, True):
                c = dict(cfg, FAST_ACC=fast)
                runs[tag + ("_fast" if fast else "")] = lambda i, c=c: a8(x, *ws[i], 1, k, dict(c))
        row = {"shape": name, "M": m}
        exact = fp8_matmul_ref(x.float(), ws[0][0], ws[0][1], 1, k)
        for tag, run in runs.items():
            row[f"{tag}_err"] = rel_err(run(0), exact if tag == "w8a16" else ref)
            row[f"{tag}_us"] = _try_time(run, copies, {"path": tag})
        print("fast_acc", json.dumps(row), flush=True)
        out.append(row)
    return out


def probe_swap_smm(name: str, n: int, k: int, ms: tuple[int, ...]) -> list[dict]:
    """torch._scaled_mm with its operands swapped (layers.fp8_linear's SMM_SWAP_ROWS): y^T
    [N, M] = W @ xq^T, so that cuBLAS tiles the weight's N as its long side; timed with the
    copy back to [M, N] (swap), without it (swap_view: y^T.t(), strided) and with
    use_fast_accum (swap_fast), against the default order (scaled_mm), activations'
    quantization included in each. Errors are against the default order's output."""
    gen, copies, ws = _cold_weights(n, k, 5)
    out = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)

        def swapped(i, back=True, fast=False):
            q, s = quantize_rows(x)
            yt = torch._scaled_mm(ws[i][0], q.t(), scale_a=ws[i][1].view(-1, 1),
                                  scale_b=s.reshape(1, -1), out_dtype=torch.bfloat16,
                                  use_fast_accum=fast)
            return yt.t().contiguous() if back else yt.t()
        runs = {"scaled_mm": lambda i: scaled_mm(x, ws[i][0], ws[i][1], None, None),
                "swap": swapped, "swap_view": lambda i: swapped(i, back=False),
                "swap_fast": lambda i: swapped(i, fast=True)}
        ref = runs["scaled_mm"](0).float()
        row = {"shape": name, "M": m}
        for tag, run in runs.items():
            row[f"{tag}_err"] = rel_err(run(0).float(), ref) if tag != "scaled_mm" else 0.0
            row[f"{tag}_us"] = _try_time(run, copies, {"path": tag})
        print("swap_smm", json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,2,4,8,16,64,256,1024,4096")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--sweep", action="store_true",
                        help="also sweep the M = 1 GEMV settings (plain and add-norm prologue)")
    parser.add_argument("--sweep-acc2d", action="store_true",
                        help="also time the M = 1 GEMV with its products reduced once (ACC2D)")
    parser.add_argument("--sweep-a8", action="store_true",
                        help="also sweep the W8A8 GEMM's tiles (plain and SWAP) at the --ms rows")
    parser.add_argument("--fast-acc", action="store_true",
                        help="also time and check FP8 fast accumulation at the --ms rows")
    parser.add_argument("--swap-smm", action="store_true",
                        help="also time _scaled_mm with its operands swapped at the --ms rows")
    parser.add_argument("--opaque", action="store_true",
                        help="also time the W8A16 tiles with OPAQUE (16-bit dot layouts)")
    parser.add_argument("--sweep-w8a16", action="store_true",
                        help="also sweep the W8A16 GEMM's tiles (plain and SWAP) at 8-128 rows")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    ms = [int(v) for v in args.ms.split(",")] if cuda else [1, 3, 20]
    if cuda:
        print(torch.cuda.get_device_name(), torch.__version__, gemm_config(256, 4096, 4096, 128, False, 132),
              flush=True)
    rows = []
    for name, (n, k) in (SHAPES if cuda else TINY).items():
        rows += probe_shape(name, n, k, ms, cuda)
    if cuda and args.sweep_a8:
        rows += [{"shape": name, "sweep_a8": sweep_a8(name, n, k, tuple(ms))}
                 for name, (n, k) in SHAPES.items()]
    if cuda and args.fast_acc:
        rows += [{"shape": name, "fast_acc": probe_fast_acc(name, n, k, tuple(ms))}
                 for name, (n, k) in SHAPES.items()]
    if cuda and args.swap_smm:
        rows += [{"shape": name, "swap_smm": probe_swap_smm(name, n, k, tuple(ms))}
                 for name, (n, k) in SHAPES.items()]
    if cuda and args.opaque:
        rows += [{"shape": name, "opaque": probe_opaque(name, n, k, tuple(ms))}
                 for name, (n, k) in SHAPES.items()]
    if cuda and args.sweep_w8a16:
        rows += [{"shape": name, "sweep_w8a16": sweep_w8a16(name, n, k)}
                 for name, (n, k) in SHAPES.items()]
    if cuda and args.sweep_acc2d:
        rows += [{"shape": name, "sweep_acc2d": sweep_acc2d(name, n, k)}
                 for name, (n, k) in SHAPES.items()]
    if cuda and args.sweep:
        rows += [{"shape": name, "sweep": sweep_gemv(name, n, k)}
                 for name, (n, k) in SHAPES.items()]
    flat = rows + [sub for r in rows for v in r.values() if isinstance(v, list)
                   for sub in v if isinstance(sub, dict)]  # the probes' rows per M
    bad = [r for r in flat for key, v in r.items()
           if key.endswith("_err") and not (v is not None and v < 0.05)]
    print("correctness:", "all paths within 5e-2 of their references" if not bad else
          f"FAILED on {len(bad)} rows: {bad[:3]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
