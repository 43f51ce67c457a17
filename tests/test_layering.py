"""Imports point one way: scaleout -> server -> hosting -> gateway -> frontend -> text -> engine -> runner
-> models -> layers -> kernels. config, sampling_params, the seam types and the composition
roots are exempt. Imports by string count too: importlib.import_module / __import__ of a
cormorant module, and "package.module:attribute" strings (the form a factory table would name)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ORDER = ["scaleout", "server", "hosting", "gateway", "frontend", "text", "engine", "runner", "models",
         "layers", "kernels"]
# The seam types are shared by both sides of their seam (plain Python, no torch).
SHARED = {"cormorant.engine.types"}
PACKAGE = Path(__file__).resolve().parent.parent / "cormorant"


IMPORT_CALLS = {"import_module", "__import__"}
ENTRY_POINT = re.compile(r"^(cormorant(?:\.\w+)+):\w+$")  # "cormorant.server.x:build"


def _imports(path: Path) -> list[str]:
    return _imports_in(path.read_text(), str(path))


def _imports_in(source: str, filename: str = "<source>") -> list[str]:
    tree = ast.parse(source, filename)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Call) and _called_name(node.func) in IMPORT_CALLS:
            if node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if match := ENTRY_POINT.match(node.value):
                names.append(match.group(1))
    return names


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cormorant" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ORDER else None


def _upward(own: str, names: list[str]) -> list[str]:
    return [name for name in names
            if (target := None if name in SHARED else _layer(name)) is not None
            and ORDER.index(target) < ORDER.index(own)]


def test_imports_point_down_the_layers():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer("cormorant." + ".".join(path.relative_to(PACKAGE).parts))
        if own is None:
            continue
        for name in _upward(own, _imports(path)):
            violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations, "\n".join(violations)


def test_imports_by_string_are_caught():
    source = (
        "import importlib\n"
        "def f():\n"
        "    importlib.import_module('cormorant.hosting.loader')\n"
        "    __import__('cormorant.bench.random_engine')\n"
        "    return {'serve': 'cormorant.hosting.registry:build'}\n"
        "'cormorant.server.app, named in prose, is no import'\n")
    names = _imports_in(source)
    assert _upward("frontend", names) == ["cormorant.hosting.loader",
                                          "cormorant.hosting.registry"]
    assert "cormorant.bench.random_engine" in names  # seen, though bench is not a layer


def test_scheduler_and_block_manager_import_no_torch():
    for name in ("block_manager.py", "scheduler.py", "sequence.py", "types.py", "core.py",
                 "batch_builder.py", "policies.py", "messages.py"):
        imported = _imports(PACKAGE / "engine" / name)
        assert not any(n == "torch" or n.startswith("torch.") for n in imported), name
