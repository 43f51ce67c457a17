"""Imports point one way: server -> gateway -> frontend -> text -> engine -> runner -> models
-> layers -> kernels. config, sampling_params, the seam types and the composition roots are exempt."""
from __future__ import annotations

import ast
from pathlib import Path

ORDER = ["server", "gateway", "frontend", "text", "engine", "runner", "models", "layers",
         "kernels"]
# The seam types are shared by both sides of their seam (plain Python, no torch).
SHARED = {"cormorant.engine.types", "cormorant.engine.sequence"}
PACKAGE = Path(__file__).resolve().parent.parent / "cormorant"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cormorant" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ORDER else None


def test_imports_point_down_the_layers():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer("cormorant." + ".".join(path.relative_to(PACKAGE).parts))
        if own is None:
            continue
        for name in _imports(path):
            target = None if name in SHARED else _layer(name)
            if target is not None and ORDER.index(target) < ORDER.index(own):
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations, "\n".join(violations)


def test_scheduler_and_block_manager_import_no_torch():
    for name in ("block_manager.py", "scheduler.py", "sequence.py", "types.py", "core.py"):
        imported = _imports(PACKAGE / "engine" / name)
        assert not any(n == "torch" or n.startswith("torch.") for n in imported), name
