"""Every exception class of the project survives pickling (issue 14, item 2).

Exceptions cross process boundaries: forked helpers (engine.forkrun) pickle
what they raise back to the caller, xdist workers and the vm flavor's guest
send failures to the controller. An exception whose __init__ takes other
arguments than its `args` cannot be rebuilt by pickle ("missing 1 required
positional argument"), and the user then sees that instead of the real
message. This finds every exception class in engine/, zdtm/ and vm/, builds
one with a distinct value for every constructor argument, and round-trips it.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import pickle
import pkgutil

import pytest

from engine import forkrun, mountinfo

PACKAGES = ("engine", "zdtm", "vm")


def _exception_classes() -> list[type]:
    found = {}
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names = [pkg_name] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
        for name in names:
            mod = importlib.import_module(name)
            for _, obj in inspect.getmembers(mod, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == name:
                    found[f"{name}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


CLASSES = _exception_classes()


def _instance(cls: type) -> BaseException:
    """`cls` built with a distinct value for every argument its __init__ names (optional ones too)."""
    if issubclass(cls, OSError) and cls.__init__ is OSError.__init__:
        return cls(errno.EIO, "a reason")
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return cls("a message")
    params = [p for p in list(sig.parameters.values())[1:]
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not params:
        return cls("a message")
    return cls(*[f"{p.name}-value" for p in params])


def _state(e: BaseException) -> tuple:
    return (type(e), str(e), e.args, getattr(e, "errno", None),
            {k: repr(v) for k, v in vars(e).items()} if hasattr(e, "__dict__") else {})


def test_found_the_project_exceptions():
    """The discovery sees the classes this test was written for (so it cannot pass on an empty list)."""
    names = {c.__name__ for c in CLASSES}
    assert {"MountinfoError", "DumpError", "RestoreError", "ChildError", "ScenarioError", "CycleFailure",
            "BackendError", "ImageError"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_exception_survives_pickling(cls):
    e = _instance(cls)
    back = pickle.loads(pickle.dumps(e))
    assert _state(back) == _state(e)


def _bad_mountinfo():
    mountinfo.parse("1 0 0:1 / / rw - tmpfs\n")


def test_mountinfo_error_crosses_the_fork_boundary():
    """The error a helper raises arrives as itself, with its text (not "internal error: ... missing")."""
    with pytest.raises(mountinfo.MountinfoError, match="mountinfo line 1: too few fields"):
        forkrun.run(_bad_mountinfo)


class _Unbuildable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def _raise_unbuildable():
    raise _Unbuildable("this", "that")


def test_unpicklable_exception_comes_back_as_its_text():
    """An exception class that cannot be rebuilt still brings its message back (as ChildError)."""
    with pytest.raises(forkrun.ChildError, match="_Unbuildable: this and that"):
        forkrun.run(_raise_unbuildable)


def test_empty_source_parses_and_round_trips():
    """mount("", "/t", "tmpfs") shows an empty source field: legitimate kernel output."""
    line = "36 25 0:33 / /t rw,relatime shared:12 - tmpfs  rw,inode64"
    m = mountinfo.parse_line(line)
    assert m.source == "" and m.fstype == "tmpfs" and m.super_opts == ("rw", "inode64")
    assert mountinfo.format_line(m) == line
    assert mountinfo.brief(line + "\n") == [(36, 25, "0:33", "/t", "tmpfs")]


@pytest.mark.parametrize("line", [
    "36 25 0:33 / /t  rw - tmpfs x rw",          # empty field before the separator
    "36 25 0:33 / /t rw - tmpfs x rw ",           # trailing space
    "36 25 0:33 / /t rw -  x rw",                 # empty fstype
    "36 25 0:33 / /t rw - tmpfs x ",              # empty super options
])
def test_other_empty_fields_are_refused(line):
    with pytest.raises(mountinfo.MountinfoError):
        mountinfo.parse_line(line)


def test_mountinfo_error_keeps_its_fields():
    e = mountinfo.MountinfoError(3, "bad", "the line")
    back = pickle.loads(pickle.dumps(e))
    assert (back.lineno, back.message, back.line, str(back)) == (3, "bad", "the line", str(e))
