"""Signal-driven I/O (engine/fown.py): an fd in O_ASYNC mode keeps its flag, its owner (F_SETOWN)
and its signal (F_SETSIG) across C/R, as nginx's channels need; so does an fd with an owner and no
O_ASYNC (a socket's SIGURG, a lease's break signal); an owner the image cannot name (a
process outside the tree, a process group whose leader is not in the tree) is refused before
the stop; an image whose owner is
no process of it (a host pid) is refused by the validator.

The snapshot (zdtm/snapshot.py) compares each fd's owner (named as a process of the tree)
and signal; the tests also read them on the restored fds and make the kernel send the signal.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time

import pytest

import enginecase
from enginecase import STOP_WATCH, CRError, case, grab_fd, py_hold, was_stopped  # noqa: F401  (fixture)
from engine import fown
from zdtm.snapshot import tree_pids

# The root holds a socket pair (10, its peer 11), a pipe (12 read, 13 write) and a pty (14 master, 15
# slave); in O_ASYNC mode: fd 10 owned by its first child with SIGUSR1, fd 12 by its second child's
# thread (F_OWNER_TID) with the default SIGIO, fd 14 by its third child with SIGUSR2.
def _kids_prelude(n: int) -> str:
    """Python lines of a root that forks `n` children holding (their pids in `kids`), with F_SETOWN_EX's
    struct (Own) and libc at hand."""
    return """
import ctypes, fcntl, signal, socket, struct
kids = []
for _ in range(COUNT):
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
        ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
        while True: signal.pause()
    kids.append(pid)
class Own(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("pid", ctypes.c_int)]
libc = ctypes.CDLL(None, use_errno=True)
""".replace("COUNT", str(n))


SETUP = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
""" + py_hold(_kids_prelude(3) + """
a, b = socket.socketpair()
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); a.close(); b.close()
r, w = os.pipe(); os.dup2(r, 12); os.dup2(w, 13); os.close(r); os.close(w)
fcntl.fcntl(10, fcntl.F_SETOWN, kids[0])
fcntl.fcntl(10, 10, signal.SIGUSR1)   # F_SETSIG
assert libc.fcntl(12, 15, ctypes.byref(Own(0, kids[1]))) == 0   # F_SETOWN_EX, F_OWNER_TID
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]
os.dup2(m, 14); os.dup2(os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY), 15); os.close(m)
for fd in (10, 12, 14):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
fcntl.fcntl(14, fcntl.F_SETOWN, kids[2])   # (after O_ASYNC, which made this process the owner)
fcntl.fcntl(14, 10, signal.SIGUSR2)
""")


def _kids(pid: int) -> list[int]:
    """The two children of the root `pid`, in the order they were forked (the lower pid first)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(x) for x in f.read().split())


def _exit_signal(pid: int, timeout: float = 10) -> int:
    """The signal that killed `pid` (a zombie: its parent, a stand-in, does not reap it); 0 alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return int(fields[-1]) & 0x7f   # exit_code
        time.sleep(0.02)
    return 0


def test_owner_and_signal_kept_and_delivered(case):
    """After C/R the fds are in O_ASYNC mode again, owned by the restored children (the owner of the
    pipe as a thread) with their signals; a write to each peer sends that signal to its owner."""
    before, after = case.roundtrip(SETUP)
    lines = {line.split(":")[0]: line for line in after.root.fds}
    assert "async-owner=pid:P" in lines["10"] and "sig=10" in lines["10"], lines["10"]
    assert "async-owner=tid:P" in lines["12"] and "sig=0" in lines["12"], lines["12"]
    kids = _kids(after.pid)
    got = {}
    for n in (10, 12, 14):
        c = grab_fd(after.pid, n)
        try:
            assert fcntl.fcntl(c, fcntl.F_GETFL) & os.O_ASYNC
            got[n] = fown.read(c)
        finally:
            os.close(c)
    assert got[10] == (fown.F_OWNER_PID, kids[0], signal.SIGUSR1), (got, kids)
    assert got[12] == (fown.F_OWNER_TID, kids[1], 0), (got, kids)
    assert got[14] == (fown.F_OWNER_PID, kids[2], signal.SIGUSR2), (got, kids)
    assert not any(_exit_signal(k, timeout=0) for k in kids)
    for n in (11, 13, 15):
        c = grab_fd(after.pid, n)
        try:
            os.write(c, b"x")
        finally:
            os.close(c)
    assert _exit_signal(kids[0]) == signal.SIGUSR1
    assert _exit_signal(kids[1]) == signal.SIGIO
    assert _exit_signal(kids[2]) == signal.SIGUSR2


def _si_fd_of_signal(fd: int, sig: int, fire) -> int:
    """si_fd of the `sig` that `fire()` sends through our copy `fd` of a restored description, its
    owner moved to this thread meanwhile (F_SETOWN keeps the registered fd number); `sig` blocked
    and taken by sigtimedwait (siginfo_t of SIGPOLL on 64-bit Linux: si_fd at byte 24). The owner is
    none again, and nothing pending, before `sig` is unblocked (a hangup at teardown would kill us)."""
    import ctypes
    import threading
    libc = ctypes.CDLL(None, use_errno=True)
    mask, info = ctypes.create_string_buffer(128), ctypes.create_string_buffer(128)
    libc.sigemptyset(mask)
    libc.sigaddset(mask, sig)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
    try:
        fown._fcntl_ptr(fd, fown.F_SETOWN_EX, fown._OwnerEx(fown.F_OWNER_TID, threading.get_native_id()))
        try:
            fire()
            got = libc.sigtimedwait(mask, info, (ctypes.c_long * 2)(5, 0))
            assert got == sig, (got, ctypes.get_errno())
        finally:
            fown._fcntl_ptr(fd, fown.F_SETOWN_EX, fown._OwnerEx(fown.F_OWNER_PID, 0))
            while libc.sigtimedwait(mask, None, (ctypes.c_long * 2)(0, 0)) == sig:
                pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return int.from_bytes(info.raw[24:28], "little", signed=True)


def test_signal_names_the_trees_fd_number(case):
    """A signal set by F_SETSIG names the fd in si_fd: the kernel keeps the number of the fd that
    turned O_ASYNC on, so restore turns it on through the tree's number (10, 14), not its own."""
    _, after = case.roundtrip(SETUP)
    got = {}
    for n, peer, sig in ((10, 11, signal.SIGUSR1), (14, 15, signal.SIGUSR2)):
        c, w = grab_fd(after.pid, n), grab_fd(after.pid, peer)
        try:
            got[n] = _si_fd_of_signal(c, sig, lambda: os.write(w, b"x"))
        finally:
            os.close(c)
            os.close(w)
    assert got == {10: 10, 14: 14}


# Without O_ASYNC: the root's socket pair (10, its peer 11) is owned by its first child; a pipe (12
# read, 13 write) by its second child's thread with SIGUSR1; a file with a read lease (14) by its
# second child, set after the lease (which made the root its owner).
NO_ASYNC = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo data > /mnt/t/leased
""" + py_hold(_kids_prelude(2) + """
a, b = socket.socketpair(); os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); a.close(); b.close()
fcntl.fcntl(10, fcntl.F_SETOWN, kids[0])
r, w = os.pipe(); os.dup2(r, 12); os.dup2(w, 13); os.close(r); os.close(w)
assert libc.fcntl(12, 15, ctypes.byref(Own(0, kids[1]))) == 0   # F_SETOWN_EX, F_OWNER_TID
fcntl.fcntl(12, 10, signal.SIGUSR1)   # F_SETSIG
os.dup2(os.open("/mnt/t/leased", os.O_RDONLY), 14)
fcntl.fcntl(14, fcntl.F_SETLEASE, fcntl.F_RDLCK)
fcntl.fcntl(14, fcntl.F_SETOWN, kids[1])
""")


def test_owner_without_o_async_kept_and_delivered(case):
    """Owners set without O_ASYNC come back on the restored children (the lease's too, after the
    lease was taken again), with their signals; a lease break sends its signal (SIGIO) to the lease
    fd's owner. (SIGURG is not watched: a stand-in keeps the default disposition, which ignores it.)"""
    before, after = case.roundtrip(NO_ASYNC)
    lines = {line.split(":")[0]: line for line in after.root.fds}
    assert "async-owner=pid:P" in lines["10"] and "sig=0" in lines["10"], lines["10"]
    assert "async-owner=tid:P" in lines["12"] and "sig=10" in lines["12"], lines["12"]
    assert "async-owner=pid:P" in lines["14"], lines["14"]
    kids = _kids(after.pid)
    got = {}
    for n in (10, 12, 14):
        c = grab_fd(after.pid, n)
        try:
            assert n == 14 or not fcntl.fcntl(c, fcntl.F_GETFL) & os.O_ASYNC   # (a lease sets it: fasync)
            got[n] = fown.read(c)
        finally:
            os.close(c)
    assert got == {10: (fown.F_OWNER_PID, kids[0], 0), 12: (fown.F_OWNER_TID, kids[1], signal.SIGUSR1),
                   14: (fown.F_OWNER_PID, kids[1], 0)}, (got, kids)
    with pytest.raises(BlockingIOError):   # (the lease breaks: its owner gets SIGIO)
        os.open(f"/proc/{after.pid}/root/mnt/t/leased", os.O_WRONLY | os.O_NONBLOCK)
    assert _exit_signal(kids[1]) == signal.SIGIO


def _refused_unstopped(case, setup: str, pattern: str, then=None, **start) -> None:
    """Start `setup` behind STOP_WATCH (then `then(pid)`; `start`: case.start's options); dump must
    refuse with a line matching `pattern` without ever stopping the tree."""
    import re
    pid = case.start(STOP_WATCH + setup, **start)
    if then is not None:
        then(pid)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(pattern, str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def _hold_owned_pair(o_async: bool) -> str:
    return py_hold("""
import fcntl, socket
a, b = socket.socketpair(); os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); a.close(); b.close()
fcntl.fcntl(10, fcntl.F_SETOWN, os.getpid())
""" + ("fcntl.fcntl(10, fcntl.F_SETFL, fcntl.fcntl(10, fcntl.F_GETFL) | os.O_ASYNC)\n" if o_async else ""))


@pytest.mark.parametrize("o_async", [True, False], ids=["o_async", "owner_only"])
def test_owner_outside_the_tree_refused_unstopped(case, o_async):
    """The owner is a process outside the tree (one this test started, which set it through a copy
    of the fd), with O_ASYNC or without: refused before the stop, naming the fd and the pid."""
    import subprocess
    import sys
    # (it ignores SIGIO: the tree's end, closed when the case ends, sends it one)
    outside = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGIO, "
                                "signal.SIG_IGN); time.sleep(600)"])

    def own_it(pid):
        holder = next(p for p in tree_pids(pid) if os.path.exists(f"/proc/{p}/fd/10"))
        c = grab_fd(holder, 10)
        try:
            fcntl.fcntl(c, fcntl.F_SETOWN, outside.pid)
        finally:
            os.close(c)

    try:
        _refused_unstopped(case, _hold_owned_pair(o_async), rf"process \d+ fd 10 \(socket:\[\d+\]\): process "
                           rf"{outside.pid} as its signal owner \(F_SETOWN\), which is not a process of the dumped "
                           "tree", then=own_it)
    finally:
        outside.kill()
        outside.wait()


def test_owner_that_exited_is_none(case):
    """An owner that exited: the kernel names no owner any more (F_GETOWN_EX gives 0), and neither
    does the restored fd; its O_ASYNC mode stays."""
    setup = py_hold("""
import fcntl, socket
rd, wr = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(wr); os.read(rd, 1); os._exit(0)
a, b = socket.socketpair(); os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11)
fcntl.fcntl(10, fcntl.F_SETOWN, pid)
fcntl.fcntl(10, fcntl.F_SETFL, fcntl.fcntl(10, fcntl.F_GETFL) | os.O_ASYNC)
os.close(wr); os.waitpid(pid, 0); os.close(rd)
""")
    before, after = case.roundtrip(setup)
    line = next(x for x in after.root.fds if x.startswith("10: "))
    assert "async-owner=none sig=0" in line, line


@pytest.mark.parametrize("o_async", [True, False], ids=["o_async", "owner_only"])
def test_process_group_owner_refused_unstopped(case, o_async):
    """A process group as owner (F_SETOWN -pgid) whose leader is not a process of the tree (it
    exited, a child it forked is the group), with O_ASYNC or without: refused before the stop."""
    _refused_unstopped(case, py_hold("""
import ctypes, fcntl, signal
ctypes.CDLL(None).prctl(36, 1)   # PR_SET_CHILD_SUBREAPER: the group's member stays in the tree
rd, wr = os.pipe()
lead = os.fork()
if lead == 0:
    os.setpgid(0, 0)
    if os.fork() == 0:
        os.close(rd)
        os.close(wr)
        os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
        ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)   # (held: PR_SET_NAME)
        while True:
            signal.pause()
    os._exit(0)
os.waitpid(lead, 0)
r, w = os.pipe(); os.dup2(r, 10); os.close(r)
fcntl.fcntl(10, fcntl.F_SETOWN, -lead)
""" + ("fcntl.fcntl(10, fcntl.F_SETFL, fcntl.fcntl(10, fcntl.F_GETFL) | os.O_ASYNC)\n" if o_async else "")),
        r"process \d+ fd 10 \(pipe:\[\d+\]\): process group \d+ as its signal owner \(F_SETOWN -pgid\), whose "
        r"leader is not a process of the dumped tree")


def test_process_group_owner_with_a_member_outside_refused_unstopped(case):
    """A process group the tree's root leads as owner, one of whose members left the tree (a
    grandchild whose parent exited went to an init or subreaper above the tree: the tree shares the
    test's pid namespace): restored, the group's signals would reach the tree's members only, so it
    is refused before the stop, naming the group and the outside member (accepted before session 33)."""
    def outside_member(pid):
        pgid = os.getpgid(pid)
        tree = set(tree_pids(pid))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            members = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in tree
                       and _pgid_or_none(int(p)) == pgid]
            if members:
                return members
            time.sleep(0.05)
        raise AssertionError(f"no member of group {pgid} outside the tree")

    _refused_unstopped(case, py_hold("""
import fcntl, select
root = os.getpid()
mid = os.fork()
if mid == 0:
    if os.fork() == 0:   # (orphaned at once: it leaves the tree, in the root's group)
        os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
        select.select([os.pidfd_open(root)], [], [])   # (until the tree's root is gone)
        os._exit(0)
    os._exit(0)
os.waitpid(mid, 0)
r, w = os.pipe(); os.dup2(r, 10); os.dup2(w, 11); os.close(r); os.close(w)
fcntl.fcntl(10, fcntl.F_SETOWN, -os.getpgrp())
fcntl.fcntl(10, fcntl.F_SETFL, fcntl.fcntl(10, fcntl.F_GETFL) | os.O_ASYNC)
"""), r"process \d+ fd 10 \(pipe:\[\d+\]\): process group \d+ as its signal owner \(F_SETOWN -pgid\), which "
        r"process \d+ outside the dumped tree is in too", then=outside_member, host_pidns=True)


def _pgid_or_none(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_own_process_group_owner_kept(case):
    """A process group the tree's root leads as owner (a daemon with its own session and group),
    with O_ASYNC and F_SETSIG: refused before session 32; kept (the snapshot compares it, as
    "pgrp:P0"), and a write to the pipe signals the group: its member child dies of SIGUSR1 (the
    root, its pid namespace's init, ignores it)."""
    setup = py_hold("""
import ctypes, fcntl, signal
if os.fork() == 0:
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)   # (held: PR_SET_NAME)
    while True:
        signal.pause()
r, w = os.pipe(); os.dup2(r, 10); os.dup2(w, 11); os.close(r); os.close(w)
fcntl.fcntl(10, 10, signal.SIGUSR1)   # F_SETSIG
fcntl.fcntl(10, fcntl.F_SETOWN, -os.getpgrp())
fcntl.fcntl(10, fcntl.F_SETFL, fcntl.fcntl(10, fcntl.F_GETFL) | os.O_ASYNC)
""")
    before, after = case.roundtrip(setup)
    line = next(x for x in after.root.fds if x.startswith("10: "))
    assert "async-owner=pgrp:P0 sig=10" in line, line
    c = grab_fd(after.pid, 10)
    try:
        assert fown.read(c) == (fown.F_OWNER_PGRP, after.pid, signal.SIGUSR1), (fown.read(c), after.pid)
    finally:
        os.close(c)
    kids = _kids(after.pid)
    assert len(kids) == 1 and os.getpgid(kids[0]) == os.getpgid(after.pid) == after.pid, kids
    w = grab_fd(after.pid, 11)
    try:
        os.write(w, b"x")
    finally:
        os.close(w)
    assert _exit_signal(kids[0]) == signal.SIGUSR1


def test_another_thread_as_owner_refused_unstopped(case):
    """A thread other than its process's main thread as owner (F_OWNER_TID): restored threads get
    other tids, refused before the stop, naming the thread and its process."""
    _refused_unstopped(case, py_hold("""
import ctypes, threading, time
class Own(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("pid", ctypes.c_int)]
t = threading.Thread(target=time.sleep, args=(600,), daemon=True); t.start()
r, w = os.pipe(); os.dup2(r, 10); os.close(r)
assert ctypes.CDLL(None).fcntl(10, 15, ctypes.byref(Own(0, t.native_id))) == 0   # F_SETOWN_EX, F_OWNER_TID
"""), r"process (\d+) fd 10 \(pipe:\[\d+\]\): thread \d+ of process \1 as its signal owner \(F_SETOWN\): "
      "restored threads get other tids")


# --- hostile images -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """The image of SETUP's tree."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _root_fd(d, n: int) -> dict:
    return next(f for f in d["processes"][0]["fds"] if f["fd"] == n)


HOSTILE = {
    # a host pid: restore would make the host's init the signal's target
    "owner-a-host-pid": (lambda d: _root_fd(d, 10).update(async_owner=1),
                         r"fd 10: its signal owner \(F_SETOWN\) 1, which is no process of the image"),
    "tid-without-owner": (lambda d: _root_fd(d, 11).update(async_tid=True),
                          r"fd 11: 'async_tid' without 'async_owner'"),
    "signal-out-of-range": (lambda d: _root_fd(d, 10).update(async_signal=65), r"fd 10.*async_signal"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_owner_refused(base_image, tmp_path, kind):
    """An owner that is no process of the image, or a thread flag without an owner, are
    refused by the validator: exit 2, one line, nothing made."""
    from test_hardening_hostile import _mutated, refused
    mutate, pattern = HOSTILE[kind]
    refused(_mutated(base_image, tmp_path, mutate), pattern, tmp_path)


def test_base_image_has_the_owners(base_image):
    """The dumped entries name the owners as processes of the image, the pipe's as a thread."""
    d = enginecase.load_manifest(base_image)
    pids = [p["pid"] for p in d["processes"]]
    a, r = _root_fd(d, 10), _root_fd(d, 12)
    assert a["async_owner"] in pids[1:] and a["async_signal"] == signal.SIGUSR1 and "async_tid" not in a, a
    assert r["async_owner"] in pids[1:] and r["async_tid"] is True and "async_signal" not in r, r


def test_register_async_through_a_number_above_the_soft_fd_limit():
    """The tree's fd number may lie above the restorer's soft RLIMIT_NOFILE (the validator bounds it
    by the hard one only): the throwaway child registers through it all the same, and si_fd names it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = max(512, len(os.listdir("/proc/self/fd")) + 64)
    number = low + 100
    if hard != resource.RLIM_INFINITY and number >= hard:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} leaves no number above a soft limit of {low}")
    r, w = os.pipe()
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        fcntl.fcntl(r, fown.F_SETSIG, signal.SIGUSR1)
        fown.register_async(r, number)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert fcntl.fcntl(r, fcntl.F_GETFL) & fown.O_ASYNC
        assert _si_fd_of_signal(r, signal.SIGUSR1, lambda: os.write(w, b"x")) == number
    finally:
        os.close(r)
        os.close(w)
