"""Int4 weight-only GEMM probe: cormorant.kernels.int_gemm against bf16 cuBLAS on Llama-3.1-8B.

For each projection of Llama-3.1-8B (qkv, o, gate_up, down) and M = 1, 16, 256 rows: the
kernel's bf16 output is checked against int_gemm_ref (relative error), then timed against
F.linear on the bf16 weight of the same shape; from 64 rows also the dequantize-then-cuBLAS
path (int_dequant + matmul). Times match a decode step: weights cold (enough
copies to overflow the 50 MB L2, each call reads the next), R calls captured in one CUDA graph
and replayed, time per call = replay / R (median of 5). GB/s counts the weight's bytes (int4
codes + bf16 scales, symmetric as --quantization int4 makes them, for the kernel; bf16 for
cuBLAS). `--sweep` also times a grid of
launch settings at every M (8-36 per shape, a few minutes) and prints the best per shape, to
tune config_for. `--packed` times the one-row GEMV's packed-bf16 sums (the default) against
its fp32 form; `--mma` kernels.int4_mma against the forms it replaces.
Run from the repository root on a CUDA machine, in one command:
    python benchmarks/int4_probe.py [--ms 1,16,256] [--sweep] [--packed] [--mma] [--out F]
Imports torch, triton and cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from cormorant.kernels.int_gemm import (config_for, int_dequant, int_gemm,  # noqa: E402
                                        int_gemm_ref)
from cormorant.kernels import int4_mma as mma  # noqa: E402
from cormorant.kernels.split_k import num_sms as _num_sms, split_k as _split_k  # noqa: E402
from cormorant.layers.int_packing import pack  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
          "down": (4096, 14336)}  # Llama-3.1-8B: N, K
GROUP, BITS = 128, 4
L2_BYTES = 50 * 2 ** 20


def int4_weights(n: int, k: int, copies: int):
    out = []
    for i in range(copies):
        gen = torch.Generator(device="cuda").manual_seed(i)
        codes = torch.randint(0, 16, (k, n), device="cuda", dtype=torch.int32, generator=gen)
        scales = torch.rand(k // GROUP, n, device="cuda", generator=gen) * 0.01 + 1e-3
        out.append((pack(codes, BITS, 0), scales.to(torch.bfloat16), None))  # symmetric
    return out


def graph_time(calls: list, reps: int = 20) -> float:
    """Seconds per call: `reps` rounds over the calls (cold copies), in one CUDA graph."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for c in calls:
                c()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / (reps * len(calls)))
    return statistics.median(times)


def probe(name: str, n: int, k: int, m: int, sweep: bool,
          compare_mma: bool = False, compare_packed: bool = False) -> dict:
    q_bytes = k * n // 2 + 2 * (k // GROUP) * n
    weights = int4_weights(n, k, max(2, -(-2 * L2_BYTES // q_bytes)))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    qw, s, z = weights[0]
    y = int_gemm(x, qw, s, z, BITS, GROUP)
    ref = int_gemm_ref(x.float(), qw, s, z, BITS, GROUP)
    rel = float((y.float() - ref).norm() / ref.norm())
    t_int = graph_time([lambda w=w: int_gemm(x, *w, BITS, GROUP) for w in weights])
    dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
             for _ in range(max(1, -(-2 * L2_BYTES // (2 * n * k))))]
    t_bf16 = graph_time([lambda w=w: F.linear(x, w) for w in dense])
    if m >= 64:  # the many-rows alternative: dequantize W per call, then cuBLAS
        y_deq = x @ int_dequant(qw, s, z, BITS, GROUP, x.dtype)
        deq_err = float((y_deq.float() - ref).norm() / ref.norm())
        t_deq = graph_time([lambda w=w: x @ int_dequant(*w, BITS, GROUP, x.dtype)
                            for w in weights])
    row = {"shape": name, "M": m, "N": n, "K": k, "rel_err": rel,
           "config": config_for(m, n, k, GROUP, _num_sms(x.device)),
           "int4_us": t_int * 1e6, "bf16_us": t_bf16 * 1e6, "speedup": t_bf16 / t_int,
           "int4_GBps": q_bytes / t_int / 1e9, "bf16_GBps": 2 * n * k / t_bf16 / 1e9}
    if m >= 64:
        row.update(dequant_us=t_deq * 1e6, dequant_rel_err=deq_err)
    if sweep:
        row["sweep"] = sweep_configs(x, weights, m, n, k)
    if compare_mma and m <= mma.MAX_ROWS:
        row.update(compare_mma_forms(x, weights, ref, m, n, k, sweep))
    if compare_packed and m == 1:
        row.update(compare_packed_forms(x, weights, ref, n, k))
    del weights, dense
    torch.cuda.empty_cache()
    return row


def _candidates(m: int, n: int, k: int, num_sms: int) -> list[dict]:
    """Launch settings to time: the GEMV at one row, the tile kernel at a few rows and at
    prefill sizes. (2026-12-06: the tile kernel's codes unpacked by a pointer per code,
    instead of a reshape, measured slower at 16 and 256 rows and was removed.)"""
    out = []
    if m == 1:
        for bn, sub, per_sm, warps in itertools.product([64, 128], [2, 4], [4, 8, 16], [4, 8]):
            out.append(dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=128, SUB=sub, num_warps=warps,
                            num_stages=2, **_split_k(n, k, bn, 128 * sub, per_sm, num_sms)))
    elif m <= 16:
        for bn, per_sm, stages in itertools.product([64, 128], [1, 2, 4], [3, 4]):
            out.append(dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=128, num_warps=4,
                            num_stages=stages, **_split_k(n, k, bn, 128, per_sm, num_sms)))
    else:
        for bm, warps in itertools.product([64, 128], [4, 8]):
            out.append(dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1,
                            K_PER_SPLIT=-(-k // 64) * 64, num_warps=warps, num_stages=3))
    return out


def compare_mma_forms(x, weights, ref, m: int, n: int, k: int, sweep: bool) -> dict:
    """kernels.int4_mma (tensor cores) beside the form it replaces (the GEMV at one row, the
    tile kernel at a few): each checked against the reference and timed; with sweep,
    int4_mma's launch settings swept too (BLOCK_N, warps, programs per SM, stages)."""
    sms = _num_sms(x.device)
    old_cfg = config_for(m, n, k, GROUP, sms)
    old = graph_time([lambda w=w: int_gemm(x, *w, BITS, GROUP, config=old_cfg)
                      for w in weights])
    out = {"old_us": old * 1e6}
    y = mma.int4_mma(x, *weights[0], GROUP)
    out["mma_rel_err"] = float((y.float() - ref).norm() / ref.norm())
    out["mma_us"] = graph_time([lambda w=w: mma.int4_mma(x, *w, GROUP) for w in weights]) * 1e6
    if not sweep:
        return out
    tried = []
    for bn, per_sm, stages, warps in itertools.product([32, 64, 128, 256], [2, 4, 8],
                                                       [2, 3, 4], [2, 4, 8]):
        if (warps == 8 and bn < 128) or (warps == 2) != (bn == 32):
            continue  # two warps (mma.sync, not wgmma) only with 32 columns
        cfg = dict(BLOCK_N=bn, WORDS=16, num_warps=warps, num_stages=stages,
                   **_split_k(n, k, bn, 128, per_sm, sms))
        try:
            y = mma.int4_mma(x, *weights[0], GROUP, config=cfg)
            err = float((y.float() - ref).norm() / ref.norm())
            t = graph_time([lambda w=w: mma.int4_mma(x, *w, GROUP, config=cfg)
                            for w in weights], reps=10)
        except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
            tried.append({"config": cfg, "error": type(e).__name__})
            continue
        tried.append({"config": cfg, "us": t * 1e6, "rel_err": err})
    timed = sorted((r for r in tried if "us" in r), key=lambda r: r["us"])
    out["mma_sweep"] = timed[:5]
    out["mma_sweep_wrong"] = sum(r["rel_err"] > 1e-2 for r in timed)
    return out


def compare_packed_forms(x, weights, ref, n: int, k: int) -> dict:
    """The one-row GEMV's two forms, each at config_for's settings for it: each word's
    products summed in packed bf16 (PACKED, the default on CUDA) and in fp32; error and time
    of each."""
    out = {}
    for packed in (True, False):
        cfg = dict(config_for(1, n, k, GROUP, _num_sms(x.device), packed), PACKED=packed)
        y = int_gemm(x, *weights[0], BITS, GROUP, config=cfg)
        key = "packed" if packed else "fp32"
        out[f"{key}_rel_err"] = float((y.float() - ref).norm() / ref.norm())
        out[f"{key}_us"] = graph_time([lambda w=w: int_gemm(x, *w, BITS, GROUP, config=cfg)
                                       for w in weights]) * 1e6
    return out


def sweep_configs(x, weights, m: int, n: int, k: int) -> list:
    results = []
    for cfg in _candidates(m, n, k, _num_sms(x.device)):
        try:
            t = graph_time([lambda w=w: int_gemm(x, *w, BITS, GROUP, config=cfg)
                            for w in weights], reps=10)
        except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
            results.append({"config": cfg, "error": type(e).__name__})
            continue
        results.append({"config": cfg, "us": t * 1e6})
    timed = sorted((r for r in results if "us" in r), key=lambda r: r["us"])
    return timed[:5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,16,256")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--mma", action="store_true",
                        help="kernels.int4_mma beside the GEMV / tile kernel (--sweep: its sweep)")
    parser.add_argument("--packed", action="store_true",
                        help="one row: the GEMV's packed-bf16 sums against its fp32 form")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'shape':8} {'M':>4} {'rel_err':>9} {'int4 us':>9} {'bf16 us':>9} {'x':>5} "
          f"{'int4 GB/s':>9} {'bf16 GB/s':>9}")
    for m in [int(v) for v in args.ms.split(",")]:
        for name, (n, k) in SHAPES.items():
            r = probe(name, n, k, m, args.sweep, args.mma, args.packed)
            rows.append(r)
            print(f"{name:8} {m:4} {r['rel_err']:9.2e} {r['int4_us']:9.1f} {r['bf16_us']:9.1f} "
                  f"{r['speedup']:5.2f} {r['int4_GBps']:9.0f} {r['bf16_GBps']:9.0f}"
                  + (f"  dequant+cuBLAS {r['dequant_us']:.1f} us (err {r['dequant_rel_err']:.1e})"
                     if "dequant_us" in r else ""), flush=True)
            if "mma_us" in r:
                print(f"    mma {r['mma_us']:.1f} us (err {r['mma_rel_err']:.1e}) vs "
                      f"old {r['old_us']:.1f}; wrong in sweep {r.get('mma_sweep_wrong')}")
                for best in r.get("mma_sweep", [])[:3]:
                    print(f"    mma sweep {best['us']:8.1f} us  {best['config']}")
            if "packed_us" in r:
                print(f"    packed {r['packed_us']:.1f} us (err {r['packed_rel_err']:.1e}) vs "
                      f"fp32 {r['fp32_us']:.1f} us (err {r['fp32_rel_err']:.1e})")
            for best in r.get("sweep", [])[:3]:
                print(f"    sweep {best['us']:8.1f} us  {best['config']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
