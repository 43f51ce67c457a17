"""server/ is HTTP only: it never imports engine internals, the runner, models or torch (the
engine's boundary messages, plain data such as EngineStats, are no internals), and never names
the engine implementation (so apps can front any engine object): hosting.loader builds engines."""
from __future__ import annotations

import ast
from pathlib import Path

import cormorant.server

SERVER_DIR = Path(cormorant.server.__file__).parent
FORBIDDEN = ("torch", "cormorant.engine", "cormorant.runner", "cormorant.models",
             "cormorant.layers", "cormorant.kernels")
SEAMS = {"cormorant.engine.messages"}
ENGINE_IMPLEMENTATION = ("cormorant.frontend.async_llm", "cormorant.frontend.default_model",
                         "cormorant.frontend.core_client", "cormorant.frontend.embedder")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_server_imports_stay_in_their_layer():
    files = sorted(SERVER_DIR.glob("*.py"))
    assert len(files) > 10
    for path in files:
        imports = _imports(path)
        bad = sorted(name for name in imports - SEAMS
                     if any(name == f or name.startswith(f + ".") for f in FORBIDDEN))
        assert not bad, f"{path.name} imports {bad}"
        assert not imports & set(ENGINE_IMPLEMENTATION), path.name
        source = path.read_text()
        assert source.startswith('"""'), f"{path.name} lacks a module docstring"
        assert source.count("\n") <= 400, f"{path.name} is longer than 400 lines"
