"""The transformers peers, seen from the benchmark: specs, caps, the subprocess, the numbers.

B1 and B3: transformers' continuous batching (bench.hf_peer run_cb) on the same workload,
capped in time per workload: a capped run measures output tokens over the first cap seconds
of the full workload (marked * in the table). B2: generate() with a static cache, one model
after the other in one process. B4 has no transformers peer (the issue names none).
Each peer runs in its own process (`python -m cormorant.bench.hf_peer`) with a hard timeout,
after cormorant's own runs have given the device memory back; a peer that cannot run reports
"peer unavailable: <reason>" instead of failing the suite.
Imports bench modules and the standard library.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from cormorant.bench.context import RunContext, child_env
from cormorant.bench.report import fmt, fraction

# Seconds of streamed generation per workload, per scale (B1: one workload; B3: per shape).
CB_CAP_S = {"full": {"b1": 120.0, "b3": 30.0}, "quick": {"b1": 30.0, "b3": 8.0},
            "tiny": {"b1": 60.0, "b3": 30.0}}
# On top of the caps: interpreter start, imports, model build, CUDA-graph warm-up or compile.
SETUP_ALLOWANCE_S = {"cb": 240.0, "generate": 180.0}  # generate: per model (torch.compile)
MIN_USEFUL_S = 60.0


def run_peer_process(spec: dict, timeout_s: float, log_path: Path) -> dict:
    """Run hf_peer on `spec`; whatever it wrote by the timeout is its answer."""
    try:
        import transformers  # noqa: F401 - only to say so early when it is missing
    except ImportError as e:
        return {"available": False, "reason": f"transformers is not installed: {e}"}
    with tempfile.TemporaryDirectory(prefix="cormorant-peer-") as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "out.json")
        spec_path.write_text(json.dumps(spec))
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cormorant.bench.hf_peer", str(spec_path), str(out_path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=child_env())
            timed_out = False
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: compile workers too
                proc.wait()
        result = json.loads(out_path.read_text()) if out_path.exists() else None
    if result is None:
        why = f"timed out after {timeout_s:.0f} s" if timed_out else f"exit {proc.returncode}"
        return {"available": False, "reason": f"{why} before any result (log: {log_path})"}
    if timed_out:
        result.setdefault("notes", []).append(f"killed at its {timeout_s:.0f} s timeout; "
                                              "cases not listed did not run")
    return result


def _spec(ctx: RunContext, kind: str, bench: str, models: list[str], cap_s: float = 0) -> dict:
    return {"kind": kind, "bench": bench, "scale": ctx.scale, "models": models,
            "device": str(ctx.device), "dtype": ctx.dtype_name, "cap_s": cap_s}


def _run(ctx: RunContext, spec: dict, timeout_s: float, name: str) -> dict:
    left = ctx.seconds_left() - 10
    if left < MIN_USEFUL_S:
        return {"available": False, "reason": f"skipped: {max(left, 0):.0f} s of the time "
                                              "budget left"}
    return run_peer_process(spec, min(timeout_s, left), ctx.out_dir / f"{name}_peer.log")


def _peer_row_cell(peer: dict, case: dict | None, key: str, digits: int = 0) -> str:
    if not peer.get("available", False):
        return "unavailable"
    if case is None:
        return "not run"
    return fmt(case.get(key), digits) + ("" if case.get("complete", True) else "*")


def _unavailable_note(peer: dict) -> list[str]:
    if peer.get("available", False):
        return [f"peer (transformers {peer.get('transformers')}): {n}"
                for n in peer.get("notes", [])] + (
            [f"peer error: {peer['error']}"] if peer.get("error") else [])
    return [f"peer unavailable: {peer.get('reason')}"]


def peer_b1(ctx: RunContext, result: dict) -> None:
    cap = CB_CAP_S[ctx.scale]["b1"]
    peer = _run(ctx, _spec(ctx, "cb", "b1", [result["model"]], cap),
                cap + SETUP_ALLOWANCE_S["cb"], "b1")
    case = (peer.get("cases") or [None])[0]
    result["peer"] = peer
    floor_tok_s = result["floor"]["output_tokens_per_s"]
    if case and case.get("output_tokens_per_s") and floor_tok_s:
        case["fraction_of_floor"] = case["output_tokens_per_s"] / floor_tok_s
    result["rows"][0][4] = _peer_row_cell(peer, case, "output_tokens_per_s")
    result["notes"] += _unavailable_note(peer)


def peer_b2(ctx: RunContext, result: dict) -> None:
    models = [r["model"] for r in result["cormorant"].values()]
    peer = _run(ctx, _spec(ctx, "generate", "b2", models),
                SETUP_ALLOWANCE_S["generate"] * len(models), "b2")
    result["peer"] = peer
    by_model = {c["model"]: c for c in peer.get("cases", [])}
    for row, r in zip(result["rows"], result["cormorant"].values()):
        case = by_model.get(r["model"])
        if case:
            case["fraction_of_floor"] = fraction(r["floor_ms"], case["ms_per_token"])
        row[4] = _peer_row_cell(peer, case, "ms_per_token", 2)
    result["notes"] += _unavailable_note(peer)


def peer_b3(ctx: RunContext, result: dict) -> None:
    cap = CB_CAP_S[ctx.scale]["b3"]
    cases = result["cases"]
    peer = _run(ctx, _spec(ctx, "cb", "b3", [result["model"]], cap),
                cap * len(cases) + SETUP_ALLOWANCE_S["cb"], "b3")
    result["peer"] = peer
    by_case = {c["case"]: c for c in peer.get("cases", [])}
    for row, c in zip(result["rows"], cases):
        case = by_case.get(c["case"])
        if case and case.get("output_tokens_per_s"):
            case["fraction_of_floor"] = (case["output_tokens_per_s"]
                                         / c["floor"]["output_tokens_per_s"])
        row[4] = _peer_row_cell(peer, case, "output_tokens_per_s")
    result["notes"] += _unavailable_note(peer)


PEERS = {"b1": peer_b1, "b2": peer_b2, "b3": peer_b3}
