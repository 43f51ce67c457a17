"""Quantized weight quality on a Llama-3.1-8B configuration: top-1 agreement with bf16 logits.

The bf16 model (seeded random weights of bench.configs' llama-3.1-8b, load_format random) and
the same weights quantized at load (`--quantization int4`: symmetric, group 128; int8; fp8:
e4m3, per-channel scales) score the same random token sequences under teacher forcing: a
32-token prefill, then 256 decode steps, one token per sequence per step through the paged KV
cache (bench.fidelity's paged_logits), so the decode kernels run: with `--num 1` the one-row
GEMVs (B2's), with 2-32 sequences int4_mma and the FP8 W8A16 tiles. Reported per scheme over
the decode positions: top-1 agreement with bf16's argmax and KL(bf16 || scheme); an fp32 run
of the same weights gives bf16's own agreement with fp32 for scale. Random weights give
nearly flat logits, so top-1 reads low for every scheme; KL is the finer measure. On the
GPU (one command, ~2-3 min on an H100):
    python benchmarks/int4_quality.py [--schemes int4,int8,fp8] [--num 4] [--out FILE.json]
CPU smoke: `--tiny` (the tiny-llama stand-in, 32 decode steps).
Imports torch and cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cormorant.bench.configs import config_dir, resolve_name  # noqa: E402
from cormorant.bench.fidelity import compare, fixed_sequences, paged_logits  # noqa: E402
from cormorant.models.loader import load_model  # noqa: E402

PREFILL = 32


def decode_logits(path: str, dtype: str, device: str, quantization: str,
                  seqs: list[list[int]]) -> list[torch.Tensor]:
    model, config = load_model(path, dtype, device, load_format="random", seed=0,
                               quantization=quantization)
    logits = [t[PREFILL:] for t in paged_logits(model, config, seqs, PREFILL)]
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default="int4,int8")
    parser.add_argument("--num", type=int, default=4, help="sequences")
    parser.add_argument("--steps", type=int, default=256, help="decode steps per sequence")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = resolve_name("llama-3.1-8b", args.tiny)
    steps = 32 if args.tiny else args.steps
    path = str(config_dir(name))
    vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
    seqs = fixed_sequences(vocab, num=args.num, length=PREFILL + steps)
    half = "bfloat16" if device == "cuda" else "float32"
    reference = decode_logits(path, half, device, "none", seqs)
    results = {}
    if device == "cuda":
        fp32 = decode_logits(path, "float32", device, "none", seqs)
        results["bf16_vs_fp32"] = vars(compare(reference, fp32))
    for scheme in args.schemes.split(","):
        results[scheme] = vars(compare(decode_logits(path, half, device, scheme, seqs),
                                       reference))
    for key, stats in results.items():
        print(f"{name} {key:14} top-1 {stats['top1']:.4f}  KL mean {stats['kl_mean']:.2e}  "
              f"max {stats['kl_max']:.2e}  ({stats['positions']} decode positions vs "
              f"{'fp32' if key.startswith('bf16') else half})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": name, "device": device, "steps": steps,
                                              "sequences": args.num, "results": results},
                                             indent=1))


if __name__ == "__main__":
    main()
