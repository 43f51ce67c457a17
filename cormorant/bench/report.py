"""Reporting: the run's environment (card, date, commit, versions), JSON files, the last table.

Every result dict carries `rows`: (case, cormorant, floor, fraction of floor, peer, target)
strings for the table; everything else in it goes to JSON unchanged.
Imports torch (versions only) and the standard library.
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import os
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """Short commit of the checkout, '+dirty' with uncommitted changes; 'unknown' without git.
    $CORMORANT_COMMIT names it where the tree travelled without its .git (a lent GPU)."""
    if os.environ.get("CORMORANT_COMMIT"):
        return os.environ["CORMORANT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.strip() + ("+dirty" if dirty.strip() else "")


def environment(device_name: str) -> dict:
    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    return {
        "card": device_name,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": tf_version,
    }


def write_json(out_dir: Path, name: str, data: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def fraction(floor_s: float | None, measured_s: float | None) -> float | None:
    """Achieved fraction of the floor: floor time / measured time (1.0 = at the floor)."""
    if not floor_s or not measured_s:
        return None
    return floor_s / measured_s


HEADER = ("bench", "case", "cormorant", "floor", "of floor", "peer", "target")


def table(results: list[dict]) -> str:
    rows = [HEADER]
    for result in results:
        for row in result.get("rows", []):
            rows.append((result["bench"], *row))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"- {result['bench']}: {n}" for result in results for n in result.get("notes", [])]
    foot = ["(* peer capped: measured on a prefix of the workload, see notes)"]
    return "\n".join(lines + ([""] + notes if notes else []) + foot)
