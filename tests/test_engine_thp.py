"""engine/thp.py: a process's THP-disable bit (prctl PR_SET_THP_DISABLE) is dumped and taken again
by its stand-in; the comparison (zdtm.snapshot) reads it too."""

from __future__ import annotations

from engine import kernel
from enginecase import case, py_hold, take, assert_same  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids

# (the holder and a child it forks after: both keep THP off, the child by inheritance)
SETUP = py_hold("import ctypes\n"
                "assert ctypes.CDLL(None).prctl(41, 1, 0, 0, 0) == 0   # PR_SET_THP_DISABLE\n"
                "os.fork()\n")


def _thp_enabled(pid: int) -> str:
    return kernel.proc_status(pid, {"THP_enabled"})["THP_enabled"].strip()


def test_thp_disable_survives_restore(case):
    pid = case.start(SETUP)
    before = take(pid)
    assert [_thp_enabled(p) for p in tree_pids(pid)][-2:] == ["0", "0"]
    restored = case.cr(pid)
    assert [_thp_enabled(p) for p in tree_pids(restored)][-2:] == ["0", "0"]
    assert_same(before, take(restored))

