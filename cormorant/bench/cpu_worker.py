"""B5's timed runs in a process of their own: `python -m cormorant.bench.cpu_worker KIND SPEC OUT`.

KIND "ours" runs cormorant's offline engine with the compiled decode step (CORMORANT_CPU_COMPILE
=1; "ours_eager": with enforce_eager instead), "llama_cpp" llama.cpp through llama-cpp-python,
on the same GGUF, prompts and thread count (SPEC, JSON). Each loads the model, warms up, then
per repetition times batch-1 greedy decode (tokens after the first over the time after the
first), and (ours) all prompts at once as concurrent streams. OUT gets the numbers and the
process's resident memory. One process per peer, so neither's memory or threads touch the
other's.
Imports: cormorant.frontend (ours) or llama_cpp (the peer), lazily.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time


def rss_mib(pid: str = "self") -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_ours(spec: dict) -> dict:
    from cormorant.frontend.llm import LLM
    from cormorant.sampling_params import SamplingParams

    start = time.perf_counter()
    llm = LLM(spec["model"], threads=spec["threads"], enable_prefix_caching=False,
              max_num_seqs=max(16, len(spec["prompts"])), quantization=spec["quantization"],
              enforce_eager=spec.get("enforce_eager", False))
    load_s = time.perf_counter() - start
    new = spec["max_tokens"]
    first = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    full = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    llm.generate([spec["prompts"][0]], SamplingParams(max_tokens=8, temperature=0))  # warm-up
    decode, streams = [], []
    for rep in range(spec["reps"]):
        prompt = spec["prompts"][rep % len(spec["prompts"])]
        t0 = time.perf_counter()
        llm.generate([prompt], first)
        t1 = time.perf_counter()
        out = llm.generate([prompt], full)[0]
        t2 = time.perf_counter()
        decode.append((new - 1) / ((t2 - t1) - (t1 - t0)))
        tokens = list(out.outputs[0].token_ids)
    if spec["streams"]:
        t0 = time.perf_counter()
        outs = llm.generate(spec["prompts"][:spec["streams"]], full)
        streams.append(sum(len(o.outputs[0].token_ids) for o in outs)
                       / (time.perf_counter() - t0))
    return {"load_s": load_s, "decode_tok_s": decode, "streams_tok_s": streams,
            "greedy_ids": tokens, "rss_mib": rss_mib()}


def run_llama_cpp(spec: dict) -> dict:
    import llama_cpp.llama_cpp as llama_cpp
    from llama_cpp import Llama

    if not spec.get("llama_extra_bufts", True):
        # No extra buffer types (AMX, runtime repacking): a build with -march=native on a VM
        # whose CPU flags show AMX that the hypervisor does not allow dies on `tilezero`.
        defaults = llama_cpp.llama_model_default_params

        def no_extra_bufts():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama_model_default_params = no_extra_bufts
    start = time.perf_counter()
    llm = Llama(spec["model"], n_threads=spec["threads"], n_threads_batch=spec["threads"],
                n_ctx=spec["n_ctx"], n_batch=512, seed=0, verbose=False)
    load_s = time.perf_counter() - start
    new = spec["max_tokens"]

    def one(prompt: list[int]) -> tuple[float, list[int]]:
        tokens: list[int] = []
        t1 = 0.0
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            tokens.append(int(token))
            if len(tokens) == 1:
                t1 = time.perf_counter()
            if len(tokens) == new:
                break
        return (new - 1) / (time.perf_counter() - t1), tokens

    one(spec["prompts"][0][:16])  # warm-up
    decode, tokens = [], []
    for rep in range(spec["reps"]):
        rate, tokens = one(spec["prompts"][rep % len(spec["prompts"])])
        decode.append(rate)
    return {"load_s": load_s, "decode_tok_s": decode, "streams_tok_s": [],
            "greedy_ids": tokens, "rss_mib": rss_mib()}


def main(argv: list[str]) -> int:
    kind, spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    if kind == "ours":  # with the compiled decode step (opt-in, runner.cpu_compile)
        os.environ["CORMORANT_CPU_COMPILE"] = "1"
    if kind == "ours_eager":  # the same engine without it
        kind, spec = "ours", {**spec, "enforce_eager": True}
    result = {"ours": run_ours, "llama_cpp": run_llama_cpp}[kind](spec)
    result["decode_median"] = statistics.median(result["decode_tok_s"])
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
