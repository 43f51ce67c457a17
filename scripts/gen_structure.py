"""Regenerate docs/structure.md below its marker: the import graph and one line per module.

The text above the marker is written by hand and kept. Run from anywhere:
`python scripts/gen_structure.py`.
"""
from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "cormorant"
DOC = ROOT / "docs" / "structure.md"
MARKER = "<!-- generated below by scripts/gen_structure.py -->"
ORDER = ["", "scaleout", "server", "hosting", "gateway", "frontend", "text", "engine", "runner", "models",
         "layers", "kernels", "bench"]
SHARED = {"config", "sampling_params", "engine_args", "__init__"}  # importable from anywhere
TITLES = {"": "Package root", "bench": "bench/ (benchmark suite behind `cormorant bench`)"}


def _group(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else ""


def _imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [n for n in names if n.startswith("cormorant.")]


def import_graph(files: list[Path]) -> list[str]:
    """`package -> package (modules)` lines; a target's modules are named when few are used."""
    edges: dict[str, dict[str, set[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(set))
    for path in files:
        own = _group(path) or path.stem
        for name in _imported(ast.parse(path.read_text())):
            parts = name.split(".")
            target = parts[1] if (PACKAGE / parts[1]).is_dir() else ""
            if target and target != own and own not in SHARED:
                edges[own][target].add(".".join(parts[2:3]))
    width = max(len(g) for g in edges)
    lines = []
    for own in [g for g in ORDER if g] + sorted(set(edges) - set(ORDER)):
        targets = edges.get(own, {})
        shown = [t + (f" ({', '.join(sorted(m))})" if len(m) <= 2 else "")
                 for t in sorted(targets, key=lambda t: ORDER.index(t) if t in ORDER else 99)
                 for m in [targets[t]]]
        lines.append(f"{own:<{width}} -> {', '.join(shown) or '(no other layer)'}")
    return lines


def module_lines(files: list[Path]) -> list[str]:
    groups: dict[str, list[str]] = {}
    for path in files:
        if path.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or "TODO"
        first = " ".join(doc.split("\n\n")[0].split())
        groups.setdefault(_group(path), []).append(
            f"- `{path.relative_to(PACKAGE).as_posix()}` — {first}")
    out = []
    for group in ORDER + sorted(set(groups) - set(ORDER)):
        if group in groups:
            out += [f"## {TITLES.get(group, group + '/')}", ""] + groups[group] + [""]
    return out


def main() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    head = DOC.read_text().split(MARKER)[0].rstrip("\n")
    body = ["## Import graph", "",
            "Package-level edges, printed from the imports (lazy ones included); config, "
            "sampling_params", "and engine_args are left out (every layer may import them). "
            "A target's modules are named", "when one or two are used.", "", "```",
            *import_graph(files), "```", "", *module_lines(files)]
    DOC.write_text("\n".join([head, "", MARKER, "", *body]).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
