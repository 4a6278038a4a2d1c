"""The dump and restore algorithm names no filesystem type (the project guide's Standards): what a
type needs is asked of its module in engine/fs/ through the FsType hooks, never decided by
comparing a mount's type with a name in dump.py, restore.py or the modules of their steps.

The check reads the sources: a type name in a comparison (`fstype == "tmpfs"`, `in ("nfs", ...)`)
or as the key of a lookup (`fs.lookup("overlay")`) fails it.
"""

from __future__ import annotations

import ast
import os

from engine import fs

_ENGINE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine")
# The algorithm and the modules of its steps.
MODULES = ("dump.py", "restore.py", "freeze.py", "nsinspect.py", "nscopy.py", "placement.py", "detached.py",
           "construct.py", "sharing.py", "filler.py")


def _strings(node) -> list[ast.Constant]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _type_names_in(source: str, names: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            consts = _strings(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "lookup":
            consts = [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        else:
            continue
        found += [(c.lineno, c.value) for c in consts if c.value in names]
    return sorted(set(found))


def _names() -> set[str]:
    fs.load()
    return {t.name for t in fs.types()}


def test_the_algorithm_names_no_filesystem_type():
    names = _names()
    assert {"tmpfs", "overlay", "proc"} <= names  # (so that the check cannot pass on an empty list)
    bad = []
    for mod in MODULES:
        with open(os.path.join(_ENGINE, mod)) as f:
            bad += [f"engine/{mod}:{line}: {name!r}" for line, name in _type_names_in(f.read(), names)]
    assert not bad, ("filesystem types named in the algorithm (ask an engine.fs hook instead): " + ", ".join(bad))


def test_the_check_sees_a_type_decision():
    names = {"tmpfs", "overlay", "nfs"}
    src = ('if sb["fstype"] == "tmpfs":\n    pass\n'
           'x = m.fstype in ("nfs", "cifs")\n'
           'h = fs.lookup("overlay")\n'
           'users["proc"]\n')
    assert _type_names_in(src, names) == [(1, "tmpfs"), (3, "nfs"), (4, "overlay")]
