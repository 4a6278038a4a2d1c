"""No function of the project is over 100 lines (the project's rule: a longer one does more than one
thing). Counted from its `def` line to its last line, decorators aside, nested functions inside
their enclosing one. benchmarks/ is left out: measuring scripts, not the engine or its runner."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIRS = ("engine", "zdtm", "vm", "tests", "bin")
LIMIT = 100


def _long_functions() -> list[str]:
    out = []
    for d in DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > LIMIT:
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    return out


def test_no_function_over_100_lines():
    assert _long_functions() == []


def test_the_check_sees_a_long_function(tmp_path, monkeypatch):
    # (it must be able to fail)
    (tmp_path / "engine").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "engine" / "long.py").write_text(f"def f():\n{body}\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert _long_functions() == ["engine/long.py:1 f: 101 lines"]
