"""GPU check of programmatic dependent launch (kernels.pdl): the same greedy tokens with it on.

A decode kernel launched with PDL starts before the one before it has finished, and must wait
(griddepcontrol.wait) before it reads that kernel's output; a missing wait is a race, which
shows as tokens that differ between runs. This runs one tiny random Llama (transformers, head
dim 128, GQA 4, 4 layers) through the LLM API in bf16 on the GPU, unquantized, with FP8
weights and with int4 weights quantized at load, each in two fresh processes: CORMORANT_PDL=0
and CORMORANT_PDL=1. Five prompts batched (decode graphs of 8, 4, 2, 1 rows) and one alone
(batch 1: the GEMV paths), greedy, 48 new tokens each. Every token must match.
    python benchmarks/pdl_check.py            (CUDA sm_90+, about a minute)
    PDL_CHECK_DEVICE=cpu python benchmarks/pdl_check.py   (smoke test of the script: PDL off)
    PDL_CHECK_QUANTS=int4 python benchmarks/pdl_check.py  (only some of none,fp8,int4)
    PDL_CHECK_SWITCH=CORMORANT_FP8_QUANT_PROLOGUE ...     (another switch flipped instead)
Exit status 1 on any difference. Imports torch, cormorant and tests/tiny (repo on path).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [[5, 6, 7], [11, 200, 37, 45, 99, 8, 301, 17, 64], list(range(30, 70)),
           [400, 3, 3, 3, 9], list(range(100, 400, 7))]
QUANTS = tuple(os.environ.get("PDL_CHECK_QUANTS", "none,fp8,int4").split(","))
# the switch flipped between the two runs: PDL by default; any other 0/1 switch of the decode
# path may be checked the same way (e.g. CORMORANT_FP8_QUANT_PROLOGUE)
SWITCH = os.environ.get("PDL_CHECK_SWITCH", "CORMORANT_PDL")


def child(path: str, quant: str) -> None:
    """Generate and print the token ids as one JSON line (runs in a fresh process)."""
    sys.path.insert(0, str(ROOT))
    from cormorant import LLM
    from cormorant.kernels import pdl
    from cormorant.sampling_params import SamplingParams
    import torch
    device = os.environ.get("PDL_CHECK_DEVICE", "cuda")  # cpu: a smoke test of the script
    llm = LLM(path, dtype="bfloat16", device=device, quantization=quant, block_size=16,
              num_kv_blocks=512, max_num_seqs=8, max_model_len=512)
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    batched = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    alone = llm.generate([PROMPTS[2]], params)[0].outputs[0].token_ids
    print(json.dumps({"pdl": pdl.enabled(torch.device(device)), "graphs":
                      llm.engine.runner.graphs is not None, "tokens": batched + [alone]}))


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return 0
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny
    tmp = Path(tempfile.mkdtemp(prefix="cormorant-pdl-"))
    path = tiny.save_model(tmp / "llama", "llama", seed=3, hidden_size=1024,
                           intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8,
                           num_key_value_heads=2)
    failed = 0
    for quant in QUANTS:
        runs = {}
        for flag in ("0", "1"):
            env = dict(os.environ, **{SWITCH: flag})
            proc = subprocess.run([sys.executable, __file__, "--child", str(path), quant],
                                  env=env, capture_output=True, text=True, timeout=600)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                print(f"{quant} {SWITCH}={flag}: FAILED (rc {proc.returncode})\n"
                      f"{proc.stderr[-3000:]}")
                failed += 1
                break
            runs[flag] = json.loads(lines[-1])
        if len(runs) < 2:
            continue
        off, on = runs["0"], runs["1"]
        same = off["tokens"] == on["tokens"]
        failed += not same or (SWITCH == "CORMORANT_PDL" and not on["pdl"])
        diffs = [i for i, (a, b) in enumerate(zip(off["tokens"], on["tokens"])) if a != b]
        print(f"{quant}: {SWITCH} on, PDL={on['pdl']} graphs={on['graphs']}: "
              f"{'identical' if same else f'DIFFERENT in prompts {diffs}'} "
              f"({sum(len(t) for t in on['tokens'])} tokens)")
    print("pdl_check:", "ok" if not failed else f"FAILED ({failed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
