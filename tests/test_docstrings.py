"""Every public function, class and method of the engine says what it does (the project guide's
Standards: "public functions have docstrings").

A method that overrides a documented one of a base class (a filesystem type's hook, engine/fs/)
is documented by it. Names with a leading underscore are private and exempt.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import engine


def _modules():
    for info in pkgutil.walk_packages(engine.__path__, "engine."):
        yield importlib.import_module(info.name)


def _documented_above(cls: type, name: str) -> bool:
    for base in cls.__mro__[1:]:
        got = base.__dict__.get(name)
        if got is not None and inspect.getdoc(got):
            return True
    return False


def _undocumented() -> list[str]:
    missing = []
    for mod in _modules():
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj) and not obj.__doc__:
                missing.append(f"{mod.__name__}.{name}")
            elif inspect.isclass(obj):
                if not obj.__doc__:
                    missing.append(f"{mod.__name__}.{name} (class)")
                for attr, member in vars(obj).items():
                    fn = member.fget if isinstance(member, property) else member
                    # Only methods defined in the class body (a field defaulting to a lambda or to a
                    # module function, as FdKind's hooks do, is described by the field's comment).
                    if attr.startswith("_") or not inspect.isfunction(fn) or \
                            fn.__qualname__ != f"{obj.__qualname__}.{attr}":
                        continue
                    if not member.__doc__ and not _documented_above(obj, attr):
                        missing.append(f"{mod.__name__}.{name}.{attr}")
    return missing


def test_public_engine_functions_have_docstrings():
    missing = _undocumented()
    assert not missing, "public engine functions without a docstring (add one): " + ", ".join(missing)


def test_the_check_sees_a_missing_docstring(monkeypatch):
    """The check can fail: a public function without a docstring in an engine module is reported."""
    from engine import mountinfo

    def undocumented_helper():
        pass

    undocumented_helper.__module__ = "engine.mountinfo"
    monkeypatch.setattr(mountinfo, "undocumented_helper", undocumented_helper, raising=False)
    assert "engine.mountinfo.undocumented_helper" in _undocumented()
