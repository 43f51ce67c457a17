"""Grammar mask time per row: our backend with JSON on llguidance and on xgrammar, b1s schema.

Rows are driven through the schema by random allowed tokens (as random weights drive them),
so the matchers sit in the states the b1s benchmark meets. Reports, per engine, the wall time
of one step's batched fill at R rows and the serial time per row.

  python benchmarks/mask_probe.py [--rows 256] [--steps 64] [--tokenizer DIR] [--engines ll,xgr]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import numpy as np

from cormorant.bench.structured import SCHEMA
from cormorant.frontend.default_model import default_model_path
from cormorant.sampling_params import StructuredOutputs
from cormorant.text.guidance_backend import GuidanceBackend
from cormorant.text.tokenizer import load_tokenizer


def allowed_ids(words: np.ndarray, vocab: int) -> np.ndarray:
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:vocab]
    return np.flatnonzero(bits)


def run_backend(tok, rows: int, steps: int, schema: str, rng: random.Random,
                engine: str) -> dict:
    """Our backend (text.guidance_backend) with JSON on `engine`, as the engine uses it."""
    backend = GuidanceBackend(tok, json_engine=engine)
    spec = StructuredOutputs(json=schema)
    matchers = [backend.new_matcher(spec) for _ in range(rows)]
    t0 = time.perf_counter()
    backend.fill_bitmasks(matchers[:1])  # compiles the grammar (xgrammar: once per spec)
    first_s = time.perf_counter() - t0
    fills, singles = [], []
    for _ in range(steps):
        live = [m for m in matchers if not m.is_terminated]
        if not live:
            break
        t0 = time.perf_counter()
        bits = backend.fill_bitmasks(live)
        fills.append((time.perf_counter() - t0) / len(live) * rows)
        words = np.frombuffer(bits, dtype="<i4").reshape(len(live), -1)
        t0 = time.perf_counter()
        backend.fill_bitmasks(live[:1])
        singles.append(time.perf_counter() - t0)
        for m, w in zip(live, words):
            ids = allowed_ids(w, backend.vocab_size)
            m.accept(int(rng.choice(list(ids))) if len(ids) else 0)
    return {"first_fill_s": first_s, "step_ms_at_rows": 1e3 * statistics.median(fills),
            "single_row_us": 1e6 * statistics.median(singles)}


def thread_sweep(tok, schema: str, rng: random.Random, steps: int = 12) -> dict:
    """xgrammar's batched fill at R rows with T threads (its threads start per call), and the
    serial per-matcher fill spread over a Python thread pool (useful only if it releases
    the GIL): median ms per fill, rows driven through the schema as in run_backend."""
    from concurrent.futures import ThreadPoolExecutor

    import xgrammar as xgr
    backend = GuidanceBackend(tok, json_engine="xgrammar")
    spec = StructuredOutputs(json=schema)
    matchers = [backend.new_matcher(spec) for _ in range(256)]
    backend.fill_bitmasks(matchers)
    xgs = [m.state.xg for m in matchers]
    batchers = {t: xgr.BatchGrammarMatcher(max_threads=t) for t in (1, 2, 4, 8, 15)}
    pool = ThreadPoolExecutor(8)
    times: dict[str, list[float]] = {}
    for _ in range(steps):
        live = [m for m in xgs if not m.is_terminated()]
        mask = np.zeros((len(live), (backend.vocab_size + 31) // 32), dtype=np.int32)
        for rows in (1, 16, 64, 256):
            part = live[:rows]
            for t, batcher in batchers.items():
                t0 = time.perf_counter()
                batcher.batch_fill_next_token_bitmask(part, mask)
                times.setdefault(f"rows{rows}_t{t}", []).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            chunks = [list(range(i, len(part), 8)) for i in range(8)]
            list(pool.map(lambda idx: [part[i].fill_next_token_bitmask(mask, i) for i in idx],
                          chunks))
            times.setdefault(f"rows{rows}_pool8", []).append(time.perf_counter() - t0)
        for m, w in zip(live, mask):
            ids = allowed_ids(w, backend.vocab_size)
            m.accept_token(int(rng.choice(list(ids))) if len(ids) else 0)
    return {k: round(1e3 * statistics.median(v), 3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--tokenizer", default=os.environ.get("CORMORANT_BENCH_TOKENIZER"))
    ap.add_argument("--engines", default="ll,xgr")
    ap.add_argument("--unbounded", action="store_true", help="strings without maxLength")
    ap.add_argument("--thread-sweep", action="store_true",
                    help="xgrammar: ms per fill by rows and threads (see thread_sweep)")
    args = ap.parse_args()
    tok = load_tokenizer(args.tokenizer or default_model_path())
    schema = SCHEMA
    if args.unbounded:
        schema = json.loads(json.dumps(SCHEMA).replace(', "maxLength": 16', ""))
    text = json.dumps(schema)
    out = {"rows": args.rows, "cpus": os.cpu_count()}
    if args.thread_sweep:
        out["xgr_ms_per_fill"] = thread_sweep(tok, text, random.Random(0))
        print(json.dumps(out, indent=1))
        return
    for name in args.engines.split(","):
        engine = {"ll": "llguidance", "xgr": "xgrammar"}[name]
        out[name] = run_backend(tok, args.rows, args.steps, text, random.Random(0), engine)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
