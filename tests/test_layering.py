"""The dependency rule of the design notes: the core (``recfeast/``) <- materialize, training, serving
(siblings that never import each other) <- the CLI. Checked on the source, import by import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIBLINGS = ("materialize", "training", "serving")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _offences(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for mod in _imports(path):
            if any(mod == f"recfeast.{f}" or mod.startswith(f"recfeast.{f}.") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    return bad


def test_siblings_never_import_each_other():
    bad = []
    for pkg in SIBLINGS:
        bad += _offences(ROOT / pkg, tuple(s for s in SIBLINGS if s != pkg))
    assert bad == []


def test_core_imports_no_sibling():
    core = [p for p in (ROOT / "recfeast").rglob("*.py") if not p.name.startswith("cli")]   # cli.py, cli_<topic>.py
    bad = []
    for path in core:
        bad += [f"{path.relative_to(ROOT)} imports {m}" for m in _imports(path)
                if any(m == f"recfeast.{s}" or m.startswith(f"recfeast.{s}.") for s in SIBLINGS)]
    assert bad == []
