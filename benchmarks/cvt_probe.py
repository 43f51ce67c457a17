"""Decode GEMV probe for the integer-op conversions (issue #12): int4 weights at M = 1.

For each Llama-3.1-8B projection (qkv, o, gate_up, down) at one row, bf16:
  int4 (group 128, symmetric, as --quantization int4 makes it): the GEMV with codes made
       floats by bits (MAGIC, the default: each code masked in place under a per-position
       exponent) against the int-to-float conversion (CORMORANT_INT_MAGIC=0); and the GEMV
       with its prologue folded in (add + RMSNorm for qkv and gate_up, SiLU for down) against
       the unfused pair (the norm / activation kernel, then the GEMV);
  bf16 cuBLAS (F.linear) for scale.
(Its FP8 half, the GEMV reading int32 words of codes, went with that kernel: slower at every
projection on an H100, 2026-12-07; RESULTS.md has the figures.)
Each path is checked against its PyTorch reference (relative error), then timed as a decode
step sees it: weights cold (copies overflowing the L2), calls captured in a CUDA graph
(int4_probe.graph_time). `--sweep` also times a small grid of the int4 GEMV's launch settings
per shape and prints the best five.
Run from the repository root on a CUDA machine:
    python benchmarks/cvt_probe.py [--sweep] [--out FILE.json]
Imports torch, triton and cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from int4_probe import GROUP, L2_BYTES, SHAPES, graph_time  # noqa: E402

from cormorant.kernels import int_gemm, split_k  # noqa: E402
from cormorant.kernels.activation import silu_and_mul, silu_and_mul_ref  # noqa: E402
from cormorant.kernels.rmsnorm import (fused_add_rms_norm,  # noqa: E402
                                       fused_add_rms_norm_ref)
from cormorant.layers.int_packing import pack  # noqa: E402

DEVICE = "cuda"
PROLOGUE = {"qkv": "add_norm", "o": None, "gate_up": "add_norm", "down": "silu"}


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


def copies(weight_bytes: int) -> int:
    """Weight copies so that a round of calls overflows the L2 twice (2 for --smoke)."""
    return 2 if DEVICE == "cpu" else max(2, -(-2 * L2_BYTES // weight_bytes))


def us(calls: list) -> float:
    if DEVICE == "cpu":  # --smoke: one call each, untimed
        for c in calls:
            c()
        return 1.0
    return graph_time(calls) * 1e6


def int4_weights(n: int, k: int, copies: int) -> list:
    """Symmetric int4, group 128, bf16 scales: (qweight, scales, None) per copy."""
    out = []
    for i in range(copies):
        gen = torch.Generator(device=DEVICE).manual_seed(i)
        codes = torch.randint(0, 16, (k, n), device=DEVICE, dtype=torch.int32, generator=gen)
        scales = torch.rand(k // GROUP, n, device=DEVICE, generator=gen) * 0.01 + 1e-3
        out.append((pack(codes, 4, 0), scales.to(torch.bfloat16), None))
    return out


def probe(name: str, n: int, k: int, sweep: bool) -> dict:
    bf16 = torch.bfloat16
    kind = PROLOGUE[name]
    gen = torch.Generator(device=DEVICE).manual_seed(7)
    x = torch.randn(1, k, device=DEVICE, generator=gen).to(bf16)
    res = torch.randn(1, k, device=DEVICE, generator=gen).to(bf16)
    nw = (torch.rand(k, device=DEVICE, generator=gen) + 0.5).to(bf16)
    gate_up = torch.randn(1, 2 * k, device=DEVICE, generator=gen).to(bf16)
    row: dict = {"shape": name, "N": n, "K": k, "prologue": kind}
    dense = [torch.randn(n, k, device=DEVICE, dtype=bf16)
             for _ in range(copies(2 * n * k))]
    row["bf16_us"] = us([lambda w=w: F.linear(x, w) for w in dense])
    del dense
    # -- int4 --------------------------------------------------------------------------------
    q_bytes = k * n // 2 + 2 * (k // GROUP) * n
    iw = int4_weights(n, k, copies(q_bytes))
    ref = int_gemm.int_gemm_ref(x.float(), *iw[0], 4, GROUP)
    for magic in (True, False):
        cfg = dict(int_gemm.config_for(1, n, k, GROUP, split_k.num_sms(x.device)), MAGIC=magic)
        tag = "int4_bits" if magic else "int4_cvt"
        row[f"{tag}_err"] = rel(int_gemm.int_gemm(x, *iw[0], 4, GROUP, config=dict(cfg)), ref)
        row[f"{tag}_us"] = us([lambda w=w, c=cfg: int_gemm.int_gemm(x, *w, 4, GROUP, config=dict(c))
                               for w in iw])
        row[f"{tag}_GBps"] = q_bytes / row[f"{tag}_us"] / 1e3
    if kind is not None:
        row.update(_int_prologue(kind, x, res, nw, gate_up, iw))
    if sweep:
        row["int4_sweep"] = _sweep_int4(x, iw, n, k)
    del iw
    torch.cuda.empty_cache()
    print(" | ".join(f"{key} {val:.4g}" if isinstance(val, float) else f"{key} {val}"
                     for key, val in row.items() if not key.endswith("sweep")), flush=True)
    for key in ("int4_sweep",):
        for r in row.get(key, [])[:3]:
            print(f"  {key} {r}", flush=True)
    return row


def _int_prologue(kind, x, res, nw, gate_up, iw) -> dict:
    out = {}
    if kind == "add_norm":
        ref_in, _ = fused_add_rms_norm_ref(x, res, nw, 1e-6)
        ref = int_gemm.int_gemm_ref(ref_in.float(), *iw[0], 4, GROUP)
        y, _ = int_gemm.int_add_rms_norm_gemv(x, res, nw, 1e-6, *iw[0], 4, GROUP)
        out["int4_fused_err"] = rel(y, ref)
        out["int4_fused_us"] = us([lambda w=w: int_gemm.int_add_rms_norm_gemv(
            x, res, nw, 1e-6, *w, 4, GROUP) for w in iw])
        xx, rr = x.clone(), res.clone()  # the in-place norm's own inputs
        out["int4_unfused_us"] = us([lambda w=w: int_gemm.int_gemm(
            fused_add_rms_norm(xx, rr, nw, 1e-6)[0], *w, 4, GROUP) for w in iw])
    else:
        ref = int_gemm.int_gemm_ref(silu_and_mul_ref(gate_up).float(), *iw[0], 4, GROUP)
        out["int4_fused_err"] = rel(int_gemm.int_silu_mul_gemv(gate_up, *iw[0], 4, GROUP), ref)
        out["int4_fused_us"] = us([lambda w=w: int_gemm.int_silu_mul_gemv(gate_up, *w, 4, GROUP)
                                   for w in iw])
        out["int4_unfused_us"] = us([lambda w=w: int_gemm.int_gemm(
            silu_and_mul(gate_up), *w, 4, GROUP) for w in iw])
    return out


def _best(results: list) -> list:
    return sorted((r for r in results if "us" in r), key=lambda r: r["us"])[:5]


def _sweep_int4(x, iw, n, k) -> list:
    results = []
    sms = split_k.num_sms(x.device)
    for bn, sub, per_sm, warps in itertools.product([64, 128], [2, 4], [4, 8, 16], [4]):
        cfg = dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=128, SUB=sub, num_warps=warps, num_stages=2,
                   **split_k.split_k(n, k, bn, 128 * sub, per_sm, sms))
        try:
            t = us([lambda w=w: int_gemm.int_gemm(x, *w, 4, GROUP, config=dict(cfg))
                    for w in iw])
            results.append({"config": {**cfg, "per_sm": per_sm}, "us": t})
        except Exception as e:  # noqa: BLE001 - a setting that does not compile is skipped
            results.append({"config": cfg, "error": type(e).__name__})
    return _best(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU (TRITON_INTERPRET=1): checks the script")
    args = parser.parse_args()
    global DEVICE
    shapes = SHAPES
    if args.smoke:
        DEVICE = "cpu"
        shapes = {"qkv": (96, 256), "o": (64, 256), "down": (64, 512)}
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(name, flush=True)
    rows = [probe(shape, n, k, args.sweep) for shape, (n, k) in shapes.items()]
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
