"""Grammar engines compared on the SmolLM2 tokenizer: per-token mask time (batch 1 and 256),
compile time and JSON-schema coverage. `PYTHONPATH=$PWD python3 benchmarks/grammar_probe.py`.

Chose llguidance for cormorant (docs/structured-output.md has the figures and the reason).
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from cormorant.frontend.default_model import default_model_path
from cormorant.text.tokenizer import load_tokenizer

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
    "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
    "score": {"type": "number"}, "active": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
    "address": {"type": "object", "properties": {"street": {"type": "string"}},
                "required": ["street"]},
    "note": {"type": ["string", "null"]}},
    "required": ["name", "age", "email", "city", "score", "active", "tags", "zip", "address",
                 "note"], "additionalProperties": False}
DOC = json.dumps({"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "city": "Oslo",
                  "score": 9.5, "active": True, "tags": ["math", "engines"], "zip": "01234",
                  "address": {"street": "St James's Square"}, "note": None})

COVERAGE = {
    "enum": {"enum": ["a", "b", 3]}, "const": {"const": "x"},
    "pattern": {"type": "string", "pattern": "^[a-z]+[0-9]{2}$"},
    "min/maxLength": {"type": "string", "minLength": 2, "maxLength": 5},
    "min/maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 1,
                     "maxItems": 4},
    "anyOf": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    "oneOf": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "allOf": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                        {"required": ["a"]}]},
    "$ref/$defs": {"$defs": {"n": {"type": "integer"}}, "type": "object",
                   "properties": {"a": {"$ref": "#/$defs/n"}}},
    "recursive $ref": {"$defs": {"t": {"type": "object", "properties": {
        "kids": {"type": "array", "items": {"$ref": "#/$defs/t"}}}}}, "$ref": "#/$defs/t"},
    "additionalProperties schema": {"type": "object",
                                    "additionalProperties": {"type": "integer"}},
    "min/max (integer)": {"type": "integer", "minimum": 3, "maximum": 90},
    "exclusiveMinimum": {"type": "number", "exclusiveMinimum": 0},
    "format date-time": {"type": "string", "format": "date-time"},
    "uniqueItems": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    "prefixItems": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
    "patternProperties": {"type": "object", "patternProperties": {"^x": {"type": "integer"}}},
    "minProperties": {"type": "object", "minProperties": 1},
}


def llg_setup(tok):
    import llguidance
    import llguidance.hf
    import llguidance.numpy as lnp
    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok.hf, n_vocab=tok.vocab_size,
                                         eos_token=tok.eos_token_ids[0])
    tok_s = time.perf_counter() - t0

    def compile_(schema):
        g = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        err = llguidance.LLMatcher.validate_grammar(g, lltok)
        if err and not err.startswith("WARNING"):
            raise ValueError(err)
        return g

    def run(g, ids, batch):
        ms = [llguidance.LLMatcher(lltok, g) for _ in range(batch)]
        mask = lnp.allocate_token_bitmask(batch, tok.vocab_size)
        ex = llguidance.LLExecutor()
        t0 = time.perf_counter()
        for t in ids:
            if batch == 1:
                lnp.fill_next_token_bitmask(ms[0], mask, 0)
            else:
                lnp.fill_next_token_bitmask_par(ex, [(m, i) for i, m in enumerate(ms)], mask)
            for m in ms:
                assert m.consume_token(t), m.get_error()
        return (time.perf_counter() - t0) / len(ids)
    return tok_s, compile_, run


def xgr_setup(tok):
    import torch  # noqa: F401  (xgrammar's bitmask helpers are torch tensors)
    import xgrammar as xgr
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok.hf, vocab_size=tok.vocab_size,
                                              stop_token_ids=list(tok.eos_token_ids))
    compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
    tok_s = time.perf_counter() - t0

    def compile_(schema):
        return compiler.compile_json_schema(json.dumps(schema))

    def run(g, ids, batch):
        ms = [xgr.GrammarMatcher(g) for _ in range(batch)]
        mask = xgr.allocate_token_bitmask(batch, tok.vocab_size)
        t0 = time.perf_counter()
        for t in ids:
            for i, m in enumerate(ms):
                m.fill_next_token_bitmask(mask, i)
            for m in ms:
                assert m.accept_token(t)
        return (time.perf_counter() - t0) / len(ids)
    return tok_s, compile_, run


def main() -> None:
    tok = load_tokenizer(default_model_path())
    ids = tok.encode(DOC, add_special_tokens=False)
    print(f"vocab {tok.vocab_size}, doc {len(ids)} tokens")
    for name, setup in (("llguidance", llg_setup), ("xgrammar", xgr_setup)):
        tok_s, compile_, run = setup(tok)
        t0 = time.perf_counter()
        g = compile_(SCHEMA)
        compile_s = time.perf_counter() - t0
        b1 = run(g, ids, 1)
        b256 = run(g, ids, 256)
        covered = []
        for feat, schema in COVERAGE.items():
            try:
                compile_(schema)
                covered.append(feat)
            except Exception as e:  # noqa: BLE001  (a probe: report, go on)
                print(f"  {name}: {feat} unsupported: {str(e)[:100]}")
        print(f"{name}: tokenizer {tok_s*1e3:.0f} ms, compile {compile_s*1e3:.1f} ms, "
              f"mask+advance b1 {b1*1e6:.0f} us/token, b256 {b256*1e3:.2f} ms/step "
              f"({b256/256*1e6:.1f} us/row), coverage {len(covered)}/{len(COVERAGE)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
