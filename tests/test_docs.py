"""docs/structure.md stays current: one line per module of the package, none missing."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_has_a_line_in_structure_md():
    text = (ROOT / "docs" / "structure.md").read_text()
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "cormorant").rglob("*.py"))
               if p.name != "__init__.py" and f"`{p.relative_to(ROOT / 'cormorant')}`" not in text]
    assert not missing, "add a line to docs/structure.md for: " + ", ".join(missing)


def test_every_module_has_a_docstring():
    import ast

    bare = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "cormorant").rglob("*.py"))
            if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not bare, "modules without a docstring: " + ", ".join(bare)
