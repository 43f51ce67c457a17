"""B5, the CPU and edge path: the embedded SmolLM2 GGUF on cormorant and on llama.cpp.

Workload (issue #13): prompts of 128 tokens, 128 new tokens, greedy. Ours runs twice, with
--enforce-eager (the default decode step: the headline rows) and with the opt-in compiled
decode step (runner.cpu_compile, CORMORANT_CPU_COMPILE=1). Figures: batch-1 decode tok/s of
both (llama.cpp through llama-cpp-python, `pip install cormorant[bench]`, with the
same thread count), 16 concurrent streams' aggregate tok/s of cormorant (prefill included),
and resident memory: `cormorant serve` on the default model after one request, beside
llama.cpp's process after its runs. The two run in separate processes (bench.cpu_worker),
interleaved round by round so the load of a shared machine falls on both alike; the load
average is recorded at the start and the end. llama.cpp runs without its extra buffer types
(AMX, runtime repacking; none applies to Q4_1 but AMX): the PyPI build is -march=native, and
on a VM that shows AMX flags without allowing AMX it dies on its first tile instruction.
Targets: batch-1 >= 0.8x llama.cpp; streams >= 2x llama.cpp's batch-1; RSS <= 1.5x llama.cpp's.
Imports: bench (context, report, cpu_worker), frontend.default_model, runner.cpu_threads,
text.tokenizer; the standard library.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cormorant.bench.context import RunContext, child_env
from cormorant.bench.cpu_worker import rss_mib
from cormorant.bench.report import fmt
from cormorant.frontend.default_model import default_model_path
from cormorant.runner.cpu_threads import usable_cpus

PROMPT_TOKENS, NEW_TOKENS, STREAMS = 128, 128, 16
_TEXT = ("The lighthouse keeper wrote in his log every evening: the weather, the ships that "
         "passed, the birds that rested on the gallery and the letters he meant to send. ")


def prompts(model: str, count: int) -> list[list[int]]:
    """`count` distinct prompts of PROMPT_TOKENS ids each (deterministic)."""
    from cormorant.text.tokenizer import load_tokenizer

    ids = load_tokenizer(model).encode(_TEXT * 20)
    return [ids[i * 3:i * 3 + PROMPT_TOKENS] for i in range(count)]


def _worker(kind: str, spec: dict, out_dir: Path, tag: str) -> dict | None:
    spec_path, out_path = out_dir / f"b5_{tag}_spec.json", out_dir / f"b5_{tag}.json"
    spec_path.write_text(json.dumps(spec))
    with open(out_dir / f"b5_{tag}.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "cormorant.bench.cpu_worker", kind,
                             str(spec_path), str(out_path)], stdout=log,
                            stderr=subprocess.STDOUT, env=child_env(), timeout=900).returncode
    return json.loads(out_path.read_text()) if rc == 0 and out_path.exists() else None


def _tree_rss_mib(pid: int) -> float:
    """RSS of a process and its children (an engine process, if any)."""
    total = rss_mib(str(pid))
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        total += rss_mib(entry)
            except (OSError, ValueError, IndexError):
                continue
    return total


def serve_rss(threads: int, out_dir: Path) -> dict:
    """Start `cormorant serve` on the default model, time it to its first served request,
    and read its resident memory after that request."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with open(out_dir / "b5_serve.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cormorant", "serve", "--port",
                                 str(port), "--threads", str(threads)], stdout=log,
                                stderr=subprocess.STDOUT, env=child_env())
        try:
            body = json.dumps({"model": "SmolLM2-135M-Instruct", "max_tokens": 16,
                               "messages": [{"role": "user", "content": "Hello!"}]}).encode()
            while True:
                if proc.poll() is not None or time.perf_counter() - start > 300:
                    return {"error": "serve did not start (b5_serve.log)"}
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                                 body, {"Content-Type": "application/json"})
                    urllib.request.urlopen(req, timeout=60).read()
                    break
                except OSError:
                    time.sleep(0.5)
            first_s = time.perf_counter() - start
            return {"first_request_s": first_s, "rss_mib": _tree_rss_mib(proc.pid)}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def run_b5(ctx: RunContext) -> dict:
    model = default_model_path()
    threads = ctx.threads or usable_cpus()
    rounds = 1 if ctx.is_tiny else 2
    spec = {"model": model, "threads": threads, "prompts": prompts(model, STREAMS),
            "max_tokens": NEW_TOKENS, "reps": 2, "streams": STREAMS, "n_ctx": 512,
            "quantization": "gguf", "llama_extra_bufts": False}
    load_start = os.getloadavg()
    ours, eager, peer = [], [], []
    for r in range(rounds):  # interleaved: ours, ours eager, llama.cpp, ours, ...
        ours.append(_worker("ours", spec, ctx.out_dir, f"ours{r}"))
        eager.append(_worker("ours_eager", spec, ctx.out_dir, f"eager{r}"))
        peer.append(_worker("llama_cpp", spec, ctx.out_dir, f"llama{r}"))
    serve = serve_rss(threads, ctx.out_dir)
    # The headline is the default (eager) decode step; the compiled one is opt-in.
    summary = summarize(eager, peer, serve, threads, load_start, os.getloadavg())
    b1, streams = _median(ours, "decode_tok_s"), _median(ours, "streams_tok_s")
    summary["rows"][2:2] = [
        ["batch-1 decode tok/s, CORMORANT_CPU_COMPILE=1", fmt(b1, 1), "", "", "", "opt-in"],
        [f"{STREAMS} streams tok/s, CORMORANT_CPU_COMPILE=1", fmt(streams, 1), "", "", "",
         "opt-in"]]
    summary["compiled"] = ours
    return summary


def _median(runs: list[dict | None], key: str) -> float | None:
    values = [v for run in runs if run for v in run[key]]
    return statistics.median(values) if values else None


def summarize(ours: list, peer: list, serve: dict, threads: int, load_start, load_end) -> dict:
    b1, streams = _median(ours, "decode_tok_s"), _median(ours, "streams_tok_s")
    peer_b1 = _median(peer, "decode_tok_s")
    peer_rss = max((p["rss_mib"] for p in peer if p), default=None)
    serve_mib = serve.get("rss_mib")
    ratio = (lambda a, b: f"{a / b:.2f}x" if a and b else "-")
    rows = [
        ["batch-1 decode tok/s", fmt(b1, 1), "", ratio(b1, peer_b1), fmt(peer_b1, 1),
         ">= 0.8x peer"],
        [f"{STREAMS} streams aggregate tok/s", fmt(streams, 1), "", ratio(streams, peer_b1),
         fmt(peer_b1, 1), ">= 2x peer batch-1"],
        ["serve RSS MiB", fmt(serve_mib, 0), "", ratio(serve_mib, peer_rss), fmt(peer_rss, 0),
         "<= 1.5x peer"],
    ]
    notes = [f"threads {threads}; load average {load_start[0]:.2f} at start, "
             f"{load_end[0]:.2f} at end (shared machine: timings are noisy)",
             f"serve: first request served {fmt(serve.get('first_request_s'), 1)} s after start"]
    if not any(peer):
        notes.append("llama.cpp peer unavailable: pip install 'cormorant[bench]'")
    same = [o["greedy_ids"] == p["greedy_ids"] for o, p in zip(ours, peer) if o and p]
    notes.append(f"greedy ids equal to llama.cpp's: {same}")
    return {"bench": "b5", "rows": rows, "notes": notes, "ours": ours, "peer": peer,
            "serve": serve, "threads": threads}
