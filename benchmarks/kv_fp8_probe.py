"""Decode attention over an FP8 KV cache against a bf16 one, at B1's batch (issue #12).

B1 (Qwen3-0.6B: 16 query heads, 8 KV heads, head_dim 128) decodes 256 sequences at a mean
context of about 820 tokens; an FP8 cache halves the bytes each step's attention reads. This
times kernels.paged_attention on the same random batch: the bf16 cache, and the FP8 cache read
each way CORMORANT_KV_FP8_CVT offers (bf16 dots with the codes made bf16 by integer ops, the
default on sm_90; fp16 dots with the codes made fp16 by the hardware conversion, values read
as code pairs, or by integer ops; Triton's casts to bf16), each at choose_config's launch
shape and over a sweep of tile sizes, warps, stages and register caps; each output is checked
against paged_attention_ref first. The two fastest FP8 settings are printed as the switches
that give them to B1 (fp8_pickN lines). (On 2026-12-07 it also swept a form with the dots on CUDA
cores, since reverted: 3x slower; benchmarks/RESULTS.md.)
Times: triton.testing.do_bench medians (L2 flushed), GB/s of KV actually read.
One command on the GPU machine, from the repository root:
    python benchmarks/kv_fp8_probe.py [--seqs 256] [--lo 100 --hi 1540] [--out FILE.json]
Imports torch, triton and cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from cormorant.kernels import paged_attention as pa  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 16, 8, 128, 16


def batch(seqs: int, lo: int, hi: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (seqs,), generator=gen).tolist()
    per = [-(-n // BLOCK) for n in lens]
    width = max(per)
    blocks = width * seqs + 16
    tables = torch.randperm(blocks, generator=gen)[:width * seqs].view(seqs, width)
    cache = torch.randn(2, blocks, BLOCK, KV_HEADS, HEAD_DIM, generator=gen)
    scales = cache.abs().amax(dim=(1, 2, 3, 4)) / 448
    fp8 = (cache / scales.view(2, 1, 1, 1, 1)).to(torch.float8_e4m3fn)
    return dict(lens=lens, q=torch.randn(seqs, HEADS, HEAD_DIM, generator=gen).cuda().bfloat16(),
                bf16=cache.cuda().bfloat16(), fp8=fp8.cuda(), scales=scales.cuda(),
                tables=tables.to(torch.int32).cuda(),
                seq_lens=torch.tensor(lens, dtype=torch.int32).cuda(),
                starts=torch.arange(seqs + 1, dtype=torch.int32).cuda())


def _cache(b: dict, kind: str) -> tuple:
    """(cache, k_scale, v_scale) that `kind` reads: every FP8 kind reads the same codes."""
    if kind == "bf16":
        return b["bf16"], None, None
    return b["fp8"], b["scales"][0:1], b["scales"][1:2]


def reference(b: dict, kind: str) -> torch.Tensor:
    """paged_attention_ref of the batch over kind's cache, fp32 (once per cache: a Python
    loop over the sequences)."""
    cache, ks, vs = _cache(b, kind)
    return pa.paged_attention_ref(b["q"], cache[0], cache[1], b["starts"], b["seq_lens"],
                                  b["tables"], HEAD_DIM ** -0.5, k_scale=ks,
                                  v_scale=vs).float()


FP8_KINDS = ("fp8_bits", "fp8_f16_cast", "fp8_f16_bits", "fp8_cast")


def run(b: dict, kind: str, config: pa.PagedAttentionConfig | None,
        ref: torch.Tensor) -> dict:
    os.environ["CORMORANT_KV_FP8_CVT"] = kind[4:] if kind != "bf16" else "bits"
    cache, ks, vs = _cache(b, kind)
    scale = HEAD_DIM ** -0.5

    def call():
        return pa.paged_attention(b["q"], cache[0], cache[1], b["starts"], b["seq_lens"],
                                  b["tables"], scale, 1, config=config, k_scale=ks, v_scale=vs)
    err = float((call().float() - ref).norm() / ref.norm())
    ms = do_bench(call)
    nbytes = sum(b["lens"]) * KV_HEADS * HEAD_DIM * 2 * cache.element_size()
    return {"kind": kind, "config": None if config is None else vars(config), "err": err,
            "us": ms * 1e3, "GBps": nbytes / ms / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, default=256)
    parser.add_argument("--lo", type=int, default=100)
    parser.add_argument("--hi", type=int, default=1540)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    b = batch(args.seqs, args.lo, args.hi)
    print(torch.cuda.get_device_name(), "seqs", args.seqs, "mean context",
          sum(b["lens"]) / len(b["lens"]), flush=True)
    sweeps = {"bf16": [pa.PagedAttentionConfig(16, t, 1, 4, s, r)
                       for t, s in [(64, 2), (64, 3), (128, 2), (128, 3)] for r in (0, 80)],
              "fp8": [pa.PagedAttentionConfig(16, t, 1, w, s, r)
                      for t, w, s in [(64, 4, 2), (64, 4, 3), (128, 4, 2), (64, 2, 2), (64, 2, 3)]
                      for r in (0, 128, 96)],
              "fp8_cast": [],  # Triton's casts to bf16: 344 us at the default (2026-12-07)
              "fp8_f16_bits": []}  # 949 loop instructions to f16_cast's 472 (sm_90 code)
    refs = {"bf16": reference(b, "bf16"), "fp8": reference(b, "fp8_bits")}
    rows, bad = [], 0
    for kind in ("bf16",) + FP8_KINDS:
        group = "bf16" if kind == "bf16" else "fp8"
        for config in [None] + sweeps.get(kind, sweeps[group]):
            try:
                row = run(b, kind, config, refs[group])
            except Exception as e:  # noqa: BLE001 - a launch shape that does not fit
                print("skip", kind, config, type(e).__name__, str(e)[:200], flush=True)
                continue
            bad += not row["err"] < 2e-2
            rows.append(row)
            print("kv_fp8", json.dumps(row), flush=True)
        mine = [r for r in rows if r["kind"] == kind]
        default = next((r for r in mine if r["config"] is None), None)
        if default is None:  # its default launch failed: the sweep's rows still count
            bad += 1
            print(f"{kind}: the default launch FAILED", flush=True)
        if not mine:
            continue
        best = min(mine, key=lambda r: r["us"])
        print(f"{kind}: default {default['us'] if default else float('nan'):.1f} us, best "
              f"{best['us']:.1f} us ({best['GBps']:.0f} GB/s) at {best['config']}", flush=True)
    fp8 = [r for r in rows if r["kind"] != "bf16" and r["config"] and r["err"] < 2e-2]
    for i, r in enumerate(sorted(fp8, key=lambda r: r["us"])[:2]):
        c = r["config"]
        # For the device script: the switches that give B1 this kernel.
        print(f"fp8_pick{i} CORMORANT_KV_FP8_CVT={r['kind'][4:]} CORMORANT_ATTN_DECODE="
              f"tile={c['tile_size']},warps={c['num_warps']},stages={c['num_stages']},"
              f"regs={c['max_registers']} {r['us']:.1f}")
    print("correctness:", "all within 2e-2 of the reference" if not bad else f"{bad} FAILED")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
