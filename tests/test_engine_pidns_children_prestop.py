"""A process whose children would go to a pid namespace that holds no process of the tree
(`unshare --pid` without --fork: the program it runs forks nothing yet) is refused with one line,
before the tree is stopped (engine/prestop.py): the refusal used to come once the tree was
stopped (engine/placement.py), which a parent waiting with WUNTRACED or a job-control shell sees.
One whose namespace's init exited and waits as its zombie is kept (pidns_children_zombie:
tests/test_engine_userns_grandchild.py, scenarios)."""

from __future__ import annotations

import os
import re

import pytest

from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)

# mntcr-hold through `unshare -p` (no --fork): its own pid namespace is the container's, its
# children's a new one no process is in yet (the kernel shows no pid_for_children link for it:
# dump took the process's children's namespace for its own, and restore put them there).
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


@pytest.mark.parametrize("setup", [NO_FORK, REAPED], ids=["no-fork-yet", "init-reaped"])
def test_a_pid_namespace_for_children_without_a_process_is_refused_unstopped(case, setup):
    """Refused with one line, the tree never stopped and left running."""
    pid = case.start(STOP_WATCH + setup)
    mine = os.readlink(f"/proc/{pid}/ns/pid")
    held = [p for p in _tree(pid) if _children_ns(p) != mine]
    assert len(held) == 1, "the setup made no process whose children go to another pid namespace"
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(rf"process {held[0]}: the pid namespace its children go to holds no process of the tree "
                     r"\(`unshare --pid` without --fork, or its init exited\): not supported", msg), msg
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
