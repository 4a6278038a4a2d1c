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



# A process that made a thread, then a pid namespace for its children (and, `joined`, the thread
# joined it too: pid_for_children is a task's, not a process's), and forked that namespace's init
# (before the thread joins: the kernel shows no link to a pid namespace without one).
# Restore makes a process's threads last, and the kernel refuses a thread to a task whose
# children's pid namespace is not its own (clone: EINVAL): refused before the stop either way.
def _threaded(joined: bool) -> str:
    join = ("libc.setns(os.open(f'/proc/self/task/{os.getpid()}/ns/pid_for_children', os.O_RDONLY), 0)"
            if joined else "0")
    return "(" + py_hold(f"""
import ctypes, threading, time
libc = ctypes.CDLL(None, use_errno=True)
done = threading.Event()
def thread():
    done.wait()
    assert {join} == 0
    done.clear()
    time.sleep(100000)
threading.Thread(target=thread, daemon=True).start()
assert libc.unshare(0x20000000) == 0   # CLONE_NEWPID
if os.fork():   # (the child, the namespace's init, holds; the link shows once it exists)
    done.set()
    while done.is_set():
        time.sleep(0.01)
""").strip() + ") </dev/null >/dev/null 2>&1 &\nhold\n"


@pytest.mark.parametrize("joined", [False, True], ids=["leader-only", "thread-joined"])
def test_threads_and_another_pid_namespace_for_children_are_refused_unstopped(case, joined):
    """A process with threads whose children go to another pid namespace: one line, never stopped."""
    pid = case.start(STOP_WATCH + _threaded(joined))
    held = [p for p in _tree(pid) if _children_ns(p) != os.readlink(f"/proc/{p}/ns/pid")]
    assert len(held) == 1, "the setup made no process whose children go to another pid namespace"
    tids = sorted(int(t) for t in os.listdir(f"/proc/{held[0]}/task"))
    assert len(tids) == 2, "the setup's process has no thread"
    assert (_children_ns(tids[0]) == _children_ns(tids[1])) == joined, "the thread did not join as asked"
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    if joined:
        want = rf"process {held[0]} \(mntcr-hold\): it has threads and its children go to another pid namespace "
    else:
        want = rf"process {held[0]} \(mntcr-hold\): thread {tids[1]} \(python3\) has its own pid_for_children "
    assert re.search(want, msg), msg
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(pid) in "SR", "the tree was not left running"
