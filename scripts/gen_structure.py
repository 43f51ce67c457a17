import ast, pathlib, re
root = pathlib.Path('/work/main/cormorant')
order = ['', 'server', 'gateway', 'frontend', 'text', 'engine', 'runner', 'models', 'layers', 'kernels', 'bench']
groups = {}
for p in sorted(root.rglob('*.py')):
    if p.name == '__init__.py': continue
    rel = p.relative_to(root)
    top = rel.parts[0] if len(rel.parts) > 1 else ''
    doc = ast.get_docstring(ast.parse(p.read_text())) or 'TODO'
    first = ' '.join(doc.split('\n\n')[0].split())
    groups.setdefault(top, []).append(f"- `{rel}` — {first}")
out = ["# Module map", "", "One line per module, generated from each module's docstring and kept current by",
       "`tests/test_docs.py`. Layers, top to bottom; an import may only point down this list",
       "(`tests/test_layering.py`): server → gateway → frontend → text → engine → runner → models →",
       "layers → kernels. `config.py`, `sampling_params.py` and the engine's seam types",
       "(`engine/types.py`, `engine/sequence.py`) are importable from everywhere.", ""]
titles = {'': 'Package root', 'bench': 'bench/ (benchmark suite behind `cormorant bench`)'}
for g in order + sorted(set(groups) - set(order)):
    if g not in groups: continue
    out += [f"## {titles.get(g, g + '/')}", ""] + groups[g] + [""]
pathlib.Path('/work/main/docs/structure.md').write_text('\n'.join(out))
