"""How far the CPU's quantized GGUF path (`--quantization gguf`) moves greedy output off the
exact path (`none`, token-identical to transformers): the embedded SmolLM2, 8 chat prompts,
64 greedy tokens each. Prints where each prompt first diverges.

    PYTHONPATH=$PWD python3 benchmarks/gguf_fastpath_fidelity.py
"""
from __future__ import annotations

import time

from cormorant import LLM
from cormorant.frontend.default_model import default_model_path
from cormorant.sampling_params import SamplingParams

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain what a CPU cache is in two sentences.", "List three prime numbers.",
           "Who wrote Romeo and Juliet?", "How do I boil an egg?",
           "Translate 'good morning' into Spanish.", "What is 12 times 7?"]


def main() -> None:
    outs = {}
    for quantization in ("none", "gguf"):
        llm = LLM(default_model_path(), quantization=quantization, max_model_len=512)
        started = time.time()
        results = llm.chat([[{"role": "user", "content": p}] for p in PROMPTS],
                           SamplingParams(temperature=0, max_tokens=64))
        outs[quantization] = [r.outputs[0].token_ids for r in results]
        print(f"{quantization}: {time.time() - started:.1f} s", flush=True)
        del llm
    same = 0
    for exact, fast in zip(outs["none"], outs["gguf"]):
        at = next((i for i, (x, y) in enumerate(zip(exact, fast)) if x != y),
                  min(len(exact), len(fast)))
        same += exact == fast
        print("identical" if exact == fast else f"diverges at token {at} of {len(exact)}")
    print(f"{same}/{len(PROMPTS)} identical over 64 tokens")


if __name__ == "__main__":
    main()
