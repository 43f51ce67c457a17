"""Decode GEMV probe: cormorant.kernels.gemv against cuBLAS (F.linear) on the projection shapes
of Qwen3-0.6B and Llama-3.1-8B at M = 1..16 rows, and a sweep of the kernel's tile settings.

How a time is made, to match a decode step inside a CUDA graph: the weight is cold (each call
reads a different copy of it, enough copies to overflow the 50 MB L2), R calls are captured in
one CUDA graph and replayed; time per call = replay time / R (median of 5). GB/s counts the
weight's bytes only. Every config's output is checked against skinny_gemm_ref before it is
timed. Run from the repository root on a CUDA machine:
    python benchmarks/gemv_probe.py [--budget S] [--ms 1,4,16] [--out FILE.json]
Imports torch, triton and cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from cormorant.kernels import activation, rmsnorm  # noqa: E402
from cormorant.kernels.gemv import (add_rms_norm_gemm, block_m_for, pick_config,  # noqa: E402
                                    silu_mul_gemm, skinny_gemm, skinny_gemm_ref)

# (model, projection) -> (N, K) of the weight [N, K]
SHAPES = {
    ("qwen3-0.6b", "qkv"): (4096, 1024), ("qwen3-0.6b", "o"): (1024, 2048),
    ("qwen3-0.6b", "gate_up"): (6144, 1024), ("qwen3-0.6b", "down"): (1024, 3072),
    ("qwen3-0.6b", "lm_head"): (151936, 1024),
    ("llama3.1-8b", "qkv"): (6144, 4096), ("llama3.1-8b", "o"): (4096, 4096),
    ("llama3.1-8b", "gate_up"): (28672, 4096), ("llama3.1-8b", "down"): (4096, 14336),
    ("llama3.1-8b", "lm_head"): (128256, 4096),
}
# Prologue (norm / SiLU) kernels' settings tried in the layer chain at M = 1.
PROLOGUE_SWEEP = [(2, 1024, 2, 4), (4, 1024, 4, 2), (4, 1024, 2, 4), (8, 1024, 4, 2),
                  (8, 1024, 8, 3), (4, 2048, 4, 2), (8, 512, 4, 3), (16, 512, 4, 3)]
TINY = {("tiny", "qkv"): (128, 64), ("tiny", "o"): (64, 96), ("tiny", "gate_up"): (160, 64),
        ("tiny", "down"): (64, 80), ("tiny", "lm_head"): (200, 64)}


def sweep_configs(m: int) -> list[dict]:
    if m == 1:
        grid = itertools.product([1, 2, 4, 8], [512, 1024, 2048], [2, 4, 8], [1, 2, 3, 4])
        return [dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=s)
                for bn, bk, w, s in grid]
    if block_m_for(m) < 16:
        grid = itertools.product([1, 2, 4, 8], [256, 512, 1024], [4, 8], [2, 3])
        return [dict(BLOCK_M=block_m_for(m), BLOCK_N=bn, BLOCK_K=bk, num_warps=w,
                     num_stages=s) for bn, bk, w, s in grid]
    grid = itertools.product([16, 32, 64], [64, 128, 256], [4, 8], [2, 4])
    return [dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=s)
            for bn, bk, w, s in grid]


def graph_time_us(fn_for_copy, copies: int, reps: int = 5) -> float:
    """Median time per call of fn_for_copy(i) over a CUDA graph of calls cycling the copies."""
    calls = max(copies, 8)
    for i in range(copies):  # warm-up (compiles) outside the capture
        fn_for_copy(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn_for_copy(i % copies)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def cpu_time_us(fn_for_copy, copies: int) -> float:
    t0 = time.perf_counter()
    fn_for_copy(0)
    return (time.perf_counter() - t0) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=240.0)
    parser.add_argument("--ms", default="1,4,16")
    parser.add_argument("--sweep", default="1", help="rows M to sweep configs for")
    parser.add_argument("--out", default=None)
    parser.add_argument("--model-check", default="",
                        help="comma-separated bench model names: batch-1 decode logits with "
                             "and without the GEMV path against an fp32 copy, then exit")
    args = parser.parse_args()
    if args.model_check:
        for name in args.model_check.split(","):
            model_check(name)
        return 0
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    device = "cuda" if cuda else "cpu"
    shapes = SHAPES if cuda else TINY
    timer = graph_time_us if cuda else cpu_time_us
    sweep_ms = {int(v) for v in args.sweep.split(",") if v}
    ms = [int(v) for v in args.ms.split(",")]
    slice_s = args.budget / max(1, len(shapes) * len(sweep_ms & set(ms)))  # per swept shape
    if cuda:
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    results, all_times = [], []
    gen = torch.Generator(device=device).manual_seed(0)
    for m in ms:
        for (model, proj), (n, k) in shapes.items():
            deadline = time.time() + slice_s
            nbytes = n * k * 2
            copies = max(1, min(16, -(-256 * 2**20 // nbytes))) if cuda else 1
            ws = [(torch.randn(n, k, device=device, generator=gen) * 0.02).to(dtype)
                  for _ in range(copies)]
            x = torch.randn(m, k, device=device, generator=gen).to(dtype)
            out = torch.empty(m, n, device=device, dtype=dtype)
            ref = skinny_gemm_ref(x, ws[0])
            t_cublas = timer(lambda i: torch.matmul(x, ws[i].t(), out=out), copies)
            default = pick_config(m, n, k)
            t_default = timer(lambda i: skinny_gemm(x, ws[i], out=out), copies)
            err_default = (skinny_gemm(x, ws[0]).float() - ref.float()).abs().max().item()
            best = (t_default, default)
            swept = 0
            if m in sweep_ms:
                for cfg in sweep_configs(m):
                    if time.time() > deadline:
                        break
                    try:
                        y = skinny_gemm(x, ws[0], config=cfg)
                        err = (y.float() - ref.float()).abs().max().item()
                        if not err <= 2e-2 * max(1.0, ref.float().abs().max().item()):
                            print(f"  WRONG {cfg}: err {err}", flush=True)
                            continue
                        t = timer(lambda i, c=cfg: skinny_gemm(x, ws[i], out=out, config=c),
                                  copies)
                    except Exception as e:  # a config Triton cannot build: skip it
                        print(f"  skip {cfg}: {type(e).__name__}: {str(e)[:80]}", flush=True)
                        continue
                    swept += 1
                    all_times.append(dict(model=model, proj=proj, m=m, us=t, **cfg))
                    if t < best[0]:
                        best = (t, cfg)
            row = dict(model=model, proj=proj, m=m, n=n, k=k, mbytes=nbytes / 1e6,
                       cublas_us=t_cublas, default_us=t_default, default_err=err_default,
                       best_us=best[0], best_cfg=best[1], swept=swept,
                       cublas_gbps=nbytes / t_cublas / 1e3, default_gbps=nbytes / t_default / 1e3,
                       best_gbps=nbytes / best[0] / 1e3)
            results.append(row)
            print(f"M={m:2d} {model:12s} {proj:8s} {n:6d}x{k:5d} {nbytes / 1e6:7.1f} MB | "
                  f"cuBLAS {t_cublas:7.2f} us {row['cublas_gbps']:6.0f} GB/s | default "
                  f"{t_default:7.2f} us {row['default_gbps']:6.0f} GB/s err {err_default:.3g} | "
                  f"best {best[0]:7.2f} us {row['best_gbps']:6.0f} GB/s {best[1]} ({swept})",
                  flush=True)
            del ws
    for m in sorted({r["m"] for r in results}):
        rows = [r for r in results if r["m"] == m]
        for model in sorted({r["model"] for r in rows}):
            sel = [r for r in rows if r["model"] == model and r["proj"] != "lm_head"]
            print(f"M={m} {model} per layer (no lm_head): cuBLAS "
                  f"{sum(r['cublas_us'] for r in sel):.1f} us, default "
                  f"{sum(r['default_us'] for r in sel):.1f} us, best "
                  f"{sum(r['best_us'] for r in sel):.1f} us", flush=True)
    chains = []
    for m in (m for m in ms if m <= 4):
        for model in sorted({model for model, _ in shapes}):
            try:
                chains.append(layer_chain(shapes, model, m, device, dtype, timer))
            except Exception:  # report and go on: the sweep's results still get written
                traceback.print_exc()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"results": results, "sweep": all_times, "chains": chains}, f, indent=1)
    return 0


def layer_chain(shapes: dict, model: str, m: int, device, dtype, timer) -> dict:
    """One decoder layer's projections with the small ops between them (attention left out),
    cold weights (a copy per layer), in a CUDA graph over `layers` layers: unfused (add+norm
    kernel, cuBLAS, SiLU kernel) against fused (kernels.gemv prologues), outputs compared."""
    (n_qkv, hidden), (_, n_attn) = shapes[(model, "qkv")], shapes[(model, "o")]
    n_gu, inter = shapes[(model, "gate_up")][0], shapes[(model, "down")][1]
    layers = 28 if model.startswith("qwen") else 32 if model.startswith("llama") else 2
    gen = torch.Generator(device=device).manual_seed(5)

    def rnd(*shape, scale=0.02):
        return (torch.randn(*shape, device=device, generator=gen) * scale).to(dtype)
    ws = [dict(qkv=rnd(n_qkv, hidden), o=rnd(hidden, n_attn), gu=rnd(n_gu, hidden),
               down=rnd(hidden, inter), n1=rnd(hidden, scale=0.1) + 1, n2=rnd(hidden, scale=0.1) + 1)
          for _ in range(layers)]
    attn_in = rnd(m, n_attn, scale=1.0)  # stands for the attention output of every layer
    h0, r0 = rnd(m, hidden, scale=1.0), rnd(m, hidden, scale=1.0)

    def unfused(i):
        w = ws[i]
        h, r = rmsnorm.fused_add_rms_norm(unfused.h.clone(), unfused.r.clone(), w["n1"], 1e-6)
        qkv = F.linear(h, w["qkv"])
        h = F.linear(attn_in, w["o"])
        h, r = rmsnorm.fused_add_rms_norm(h, r, w["n2"], 1e-6)
        out = F.linear(activation.silu_and_mul(F.linear(h, w["gu"])), w["down"])
        unfused.h, unfused.r = out, r

    def fused_with(cfg):
        def fused(i):
            w = ws[i]
            qkv, r = add_rms_norm_gemm(fused.h, fused.r, w["n1"], 1e-6, w["qkv"], config=cfg)
            h = skinny_gemm(attn_in, w["o"])
            gu, r = add_rms_norm_gemm(h, r, w["n2"], 1e-6, w["gu"], config=cfg)
            fused.h, fused.r = silu_mul_gemm(gu, w["down"], config=cfg), r
        return fused

    result = {"model": model, "m": m, "layers": layers}
    variants = [("unfused", unfused), ("fused", fused_with(None))]
    if m == 1:
        for bn, bk, warps, stages in PROLOGUE_SWEEP:
            cfg = dict(BLOCK_M=1, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
            variants.append((f"fused n{bn} k{bk} w{warps} s{stages}", fused_with(cfg)))
    for name, fn in variants:
        fn.h, fn.r = h0, r0
        result[f"{name}_us_per_layer"] = timer(fn, layers)
        fn.h, fn.r = h0, r0
        for i in range(layers):
            fn(i)
        result[f"{name}_out"] = fn.h.float()
    for name, _ in variants[2:]:
        print(f"chain {model} M={m} {name}: {result[name + '_us_per_layer']:.2f} us/layer",
              flush=True)
        result.pop(name + "_out")
    diff = (result.pop("fused_out") - result.pop("unfused_out")).abs().max().item()
    result["max_abs_diff_after_all_layers"] = diff
    print(f"chain {model} M={m}: unfused {result['unfused_us_per_layer']:.2f} us/layer, fused "
          f"{result['fused_us_per_layer']:.2f} us/layer, max |diff| after {layers} layers "
          f"{diff:.3g}", flush=True)
    return result



def model_check(name: str, prompt_len: int = 128, steps: int = 8) -> dict:
    """A real configuration with random bf16 weights: one prompt, then `steps` batch-1 decode
    steps, each run with the skinny-GEMM path (layers.linear rule: batch 1) and without it
    (DECODE_MAX_ROWS = 0: cuBLAS and the unfused norm/SiLU kernels), both scored against an
    fp32 copy of the same weights. Tokens are teacher-forced from the unfused run."""
    import copy

    from cormorant.bench.configs import config_dir
    from cormorant.layers import linear
    from cormorant.layers.attention import AttentionMetadata
    from cormorant.models.loader import load_model
    from cormorant.models.random_init import default_attention_backend

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    bf16, cfg = load_model(str(config_dir(name)), torch.bfloat16 if cuda else torch.float32,
                           device, default_attention_backend(torch.device(device)),
                           load_format="random", seed=3)
    ref = copy.deepcopy(bf16).float()
    block = 16
    blocks = -(-(prompt_len + steps) // block)

    def caches(dtype):
        return [torch.zeros(2, blocks, block, cfg.num_kv_heads, cfg.head_dim, dtype=dtype,
                            device=device) for _ in range(cfg.num_layers)]

    def meta(start: int, n: int) -> AttentionMetadata:
        i32 = dict(dtype=torch.int32, device=device)
        return AttentionMetadata(
            torch.arange(start, start + n, dtype=torch.int64, device=device),
            torch.tensor([0, n], **i32), torch.tensor([start + n], **i32),
            torch.arange(blocks, **i32)[None, :], max_query_len=n, max_seq_len=start + n,
            query_lens_cpu=[n], seq_lens_cpu=[start + n])

    gen = torch.Generator(device=device).manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), device=device, generator=gen)
    kv = {"bf16": caches(bf16.lm_head.weight.dtype), "fp32": caches(torch.float32)}
    models = {"bf16": bf16, "fp32": ref}
    positions = torch.arange(prompt_len, device=device)
    last = {}
    with torch.inference_mode():
        for key, model in models.items():
            hidden = model(prompt, positions, kv[key], meta(0, prompt_len))
            last[key] = model.compute_logits(hidden[-1:])
        token = last["bf16"].argmax(-1)
        rows = []
        saved = linear.DECODE_MAX_ROWS
        for step in range(steps):
            pos = prompt_len + step
            args = (token, torch.tensor([pos], device=device))
            logits = {"fp32": ref.compute_logits(ref(*args, kv["fp32"], meta(pos, 1)))}
            try:
                for label, rows_allowed in (("gemv", 1), ("cublas", 0)):
                    linear.DECODE_MAX_ROWS = rows_allowed
                    logits[label] = bf16.compute_logits(bf16(*args, kv["bf16"], meta(pos, 1)))
            finally:
                linear.DECODE_MAX_ROWS = saved
            exact = logits["fp32"]
            scale = exact.abs().max().item()
            row = {"step": step,
                   "gemv_err": (logits["gemv"] - exact).abs().max().item() / scale,
                   "cublas_err": (logits["cublas"] - exact).abs().max().item() / scale,
                   "gemv_vs_cublas": (logits["gemv"] - logits["cublas"]).abs().max().item()
                   / scale,
                   "argmax": [int(logits[k].argmax()) for k in ("fp32", "gemv", "cublas")]}
            rows.append(row)
            token = logits["cublas"].argmax(-1)
    worst = {k: max(r[k] for r in rows) for k in ("gemv_err", "cublas_err", "gemv_vs_cublas")}
    agree = sum(r["argmax"][1] == r["argmax"][2] for r in rows)
    print(f"model-check {name}: max |logit error| / max |logit| vs fp32 over {steps} steps: "
          f"gemv {worst['gemv_err']:.2e}, cublas {worst['cublas_err']:.2e}; gemv vs cublas "
          f"{worst['gemv_vs_cublas']:.2e}; argmax gemv == cublas {agree}/{steps}; "
          f"argmax (fp32, gemv, cublas) {[r['argmax'] for r in rows]}", flush=True)
    del bf16, ref, kv
    if cuda:
        torch.cuda.empty_cache()
    return {"model": name, "rows": rows, **worst}


if __name__ == "__main__":
    sys.exit(main())
