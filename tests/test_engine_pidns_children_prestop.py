"""A process whose children would go to a pid namespace that holds no process of the tree any more
(its init exited and was reaped) is refused with one line, before the tree is stopped
(engine/prestop.py): the refusal used to come once the tree was stopped (engine/placement.py),
which a parent waiting with WUNTRACED or a job-control shell sees. One whose namespace's init
exited and waits as its zombie is kept (pidns_children_zombie: tests/test_engine_userns_grandchild.py,
scenarios); one made by `unshare --pid` without --fork, no process in it yet, is made again by its
stand-in (pidns_children_new)."""

from __future__ import annotations

import os
import re

import pytest

import enginecase
from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)

# mntcr-hold through `unshare -p` (no --fork): its own pid namespace is the container's, its
# children's a new one no process is in yet (the kernel shows no pid_for_children link for it:
# dump once took the process's children's namespace for its own, and restore put them there).
NO_FORK = "unshare -p /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &\nhold\n"
# A process that unshared a pid namespace, forked its init and reaped it: the namespace is dead.
REAPED = "(" + py_hold("""
import ctypes
assert ctypes.CDLL(None, use_errno=True).unshare(0x20000000) == 0   # CLONE_NEWPID
kid = os.fork()
if kid == 0:
    os._exit(0)
os.waitpid(kid, 0)
""").strip() + ") </dev/null >/dev/null 2>&1 &\nhold\n"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_new_pid_namespace_for_children_no_process_is_in_yet_is_made_again(case):
    """`unshare -p` without --fork: the restored process's children go to a new pid namespace too
    (no link shown), not to its own (the snapshot says "a new one, no process yet" for it)."""
    pid = case.start(NO_FORK)
    held = [p for p in _tree(pid) if _children_ns(p) is None]
    assert len(held) == 1, "the setup made no process whose children go to a new pid namespace"
    before = enginecase.take(pid)
    assert "pid_for_children P1: a new one, no process yet's" in before.snap.text(), before.snap.text()
    after_pid = case.restore(_dumped(case, pid))
    enginecase.assert_same(before, enginecase.take(after_pid))
    restored = [p for p in _tree(after_pid) if _children_ns(p) is None]
    assert len(restored) == 1, "the restored process's children go to its own pid namespace"


def _dumped(case, pid: int) -> str:
    images = case.new_images_dir()
    case.dump(pid, images)
    return images


def test_a_pid_namespace_for_children_without_a_process_is_refused_unstopped(case):
    """Its init reaped: refused with one line, the tree never stopped and left running."""
    pid = case.start(STOP_WATCH + REAPED)
    mine = os.readlink(f"/proc/{pid}/ns/pid")
    held = [p for p in _tree(pid) if _children_ns(p) != mine]
    assert len(held) == 1, "the setup made no process whose children go to another pid namespace"
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(rf"process {held[0]}: the pid namespace its children go to holds no process of the tree "
                     r"\(its init exited and was reaped: `unshare --pid --fork` whose program ended\): not supported",
                     msg), msg
    assert len(err.value.args[0].strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(pid) in "SR", "the tree was not left running"


def _children_ns(pid: int) -> str | None:
    """Its pid_for_children link; None when the kernel shows none (a namespace with no init yet)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid_for_children")
    except FileNotFoundError:
        return None


def _tree(pid: int) -> list[int]:
    from engine import freeze
    return [p for p, _ in freeze.process_tree(pid)]
