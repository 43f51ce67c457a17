"""Quality of quantized weights: top-1 agreement of each format's logits with the bf16 model's.

On random weights of a bench configuration (default Llama-3.1-8B, seed 0: the same weights
for every format, quantized at load by `--quantization NAME`), the bf16 engine decodes
`--steps` tokens greedily from each of `--prompts` random prompts. Each format's engine then
reads those sequences teacher-forced (prompt_logprobs=1) and counts the decode positions where
its top-1 token is the bf16 model's token. The bf16 engine doing the same gives the noise
floor (a prefill's sums in another order than the decode steps'): formats are read against it.
One command on the GPU machine, from the repository root:
    python benchmarks/quant_quality.py --formats fp8 [--steps 256 --prompts 8] [--out q.json]
`--tiny` runs the tiny Llama on the CPU (a smoke test). Add a format: name it in --formats
(any `--quantization` choice that quantizes dense weights).
Imports cormorant (repo on path).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from cormorant import LLM  # noqa: E402
from cormorant.bench.context import EngineSettings, release  # noqa: E402
from cormorant.sampling_params import SamplingParams  # noqa: E402


def engine(name: str, dtype: str, quantization: str, max_len: int) -> LLM:
    settings = EngineSettings(dtype=dtype, seed=0, max_num_seqs=16, max_model_len=max_len,
                              quantization=quantization)
    return LLM.from_config(settings.engine_config(name))


def top1_agreement(llm: LLM, sequences: list[list[int]], prompt_len: int) -> float:
    """Fraction of decode positions whose top-1 token under `llm` is the sequence's token."""
    outs = llm.generate(sequences, SamplingParams(max_tokens=1, prompt_logprobs=1))
    hits = total = 0
    for seq, out in zip(sequences, outs):
        for pos in range(prompt_len, len(seq)):  # prompt_logprobs[pos]: logits of pos - 1
            top = out.prompt_logprobs[pos].top
            hits += max(top, key=top.get) == seq[pos]
            total += 1
    return hits / total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b", help="a bench configuration")
    parser.add_argument("--formats", default="fp8", help="comma-separated --quantization names")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="tiny-llama on the CPU (smoke)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    name, dtype = ("tiny-llama", "float32") if args.tiny else (args.model, "bfloat16")
    steps = min(args.steps, 16) if args.tiny else args.steps
    max_len = args.prompt_len + steps + 8
    rng = random.Random(0)
    bf16 = engine(name, dtype, "none", max_len)
    vocab = bf16.model_config.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(args.prompt_len)]
               for _ in range(args.prompts)]
    outs = bf16.generate(prompts, SamplingParams(temperature=0.0, max_tokens=steps,
                                                 ignore_eos=True))
    sequences = [p + o.outputs[0].token_ids for p, o in zip(prompts, outs)]
    result = {"model": name, "dtype": dtype, "steps": steps, "prompts": args.prompts,
              f"{dtype} (noise floor)": top1_agreement(bf16, sequences, args.prompt_len)}
    del bf16
    release()
    for fmt in args.formats.split(","):
        llm = engine(name, dtype, fmt, max_len)
        result[fmt] = top1_agreement(llm, sequences, args.prompt_len)
        del llm
        release()
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
