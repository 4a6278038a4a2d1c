"""Engine round trips of file locks (engine/filelocks.py): flock, POSIX ranges, OFD locks and
leases held by the tree are taken again by the restored processes, in the right process and on the
right open file description; what restore cannot make exactly is refused before the stop.

The snapshot compares each fd's locks (zdtm/snapshot.py); the tests also read /proc/locks with
the restored pids.
"""

from __future__ import annotations

import os
import re

from enginecase import STOP_WATCH, case, py_hold, was_stopped  # noqa: F401  (fixture)
from test_engine_prestop import _refused_unstopped

LOCKER = """
import fcntl, struct
def ofd(fd, kind, start, length):
    fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", kind, 0, start, length, 0))   # F_OFD_SETLK
def ready():   # a child: off the setup's pipe, named as a holder
    import ctypes
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
"""


def _tree_locks(pid: int) -> list[tuple]:
    """(kind, mode, pid of the tree's process or -1, inode, start, end) of every lock in /proc/locks
    held by the tree at `pid` (its processes' pids, or on an inode one of them has open)."""
    from zdtm.snapshot import tree_pids
    pids = tree_pids(pid)
    inodes = set()
    for p in pids:
        for n in os.listdir(f"/proc/{p}/fd"):
            try:
                st = os.stat(f"/proc/{p}/fd/{n}")
            except OSError:
                continue
            inodes.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}")
    out = []
    with open("/proc/locks") as f:
        for line in f:
            w = line.split()[1:]
            if w[0] == "->":
                continue
            if int(w[3]) in pids or (w[3] == "-1" and w[4] in inodes):
                out.append((w[0], w[2], pids.index(int(w[3])) if int(w[3]) in pids else -1, w[5], w[6]))
    return sorted(out)


def _roundtrip(case, setup: str):
    pid = case.start(setup)
    before = _tree_locks(pid)
    from enginecase import take, assert_same
    first = take(pid)
    pid = case.cr(pid)
    after = _tree_locks(pid)
    assert_same(first, take(pid))
    assert after == before
    return before


def test_flock_posix_ofd_lease_one_process(case):
    """One process: an exclusive and a shared flock, POSIX read and write ranges, an OFD range,
    a read lease: all back, on the same fds, with the restored pid."""
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t; for f in a b c d e; do echo data > /mnt/t/$f; done\n" + py_hold(LOCKER + """
a = os.open("/mnt/t/a", os.O_RDWR); fcntl.flock(a, fcntl.LOCK_EX)
b = os.open("/mnt/t/b", os.O_RDONLY); fcntl.flock(b, fcntl.LOCK_SH)
c = os.open("/mnt/t/c", os.O_RDWR)
fcntl.lockf(c, fcntl.LOCK_SH, 10, 5); fcntl.lockf(c, fcntl.LOCK_EX, 0, 100); fcntl.lockf(c, fcntl.LOCK_EX, 3, 40)
d = os.open("/mnt/t/d", os.O_RDWR); ofd(d, fcntl.F_WRLCK, 3, 7); ofd(d, fcntl.F_RDLCK, 20, 0)
e = os.open("/mnt/t/e", os.O_RDONLY); fcntl.fcntl(e, fcntl.F_SETLEASE, fcntl.F_RDLCK)
""")
    locks = _roundtrip(case, setup)
    kinds = sorted({k for k, *_ in locks})
    assert kinds == ["FLOCK", "LEASE", "OFDLCK", "POSIX"], locks
    assert ("POSIX", "READ", 0, "5", "14") in locks and ("POSIX", "WRITE", 0, "100", "EOF") in locks
    assert ("OFDLCK", "WRITE", -1, "3", "9") in locks and ("OFDLCK", "READ", -1, "20", "EOF") in locks


def test_locks_in_parent_and_child_and_inherited_flock(case):
    """POSIX ranges in a parent and its child on one file; a flock taken by the parent before fork
    (one description in two processes: one lock, taken once, by the parent); an OFD lock inherited."""
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo data > /mnt/t/f; echo x > /mnt/t/g\n" + py_hold(LOCKER + """
fl = os.open("/mnt/t/g", os.O_RDWR); fcntl.flock(fl, fcntl.LOCK_EX)
od = os.open("/mnt/t/g", os.O_RDONLY); ofd(od, fcntl.F_RDLCK, 0, 0)
f = os.open("/mnt/t/f", os.O_RDWR)
fcntl.lockf(f, fcntl.LOCK_EX, 10, 0)
r, w = os.pipe()
if os.fork() == 0:
    fcntl.lockf(f, fcntl.LOCK_EX, 10, 20)
    fcntl.lockf(f, fcntl.LOCK_SH, 5, 40)
    import signal
    ready()
    os.close(w)
    while True:
        signal.pause()
os.close(w); os.read(r, 1)
""")
    locks = _roundtrip(case, setup)
    assert [lk for lk in locks if lk[0] == "FLOCK"] == [("FLOCK", "WRITE", 0, "0", "EOF")]
    assert ("POSIX", "WRITE", 0, "0", "9") in locks and ("POSIX", "WRITE", 1, "20", "29") in locks
    assert ("POSIX", "READ", 1, "40", "44") in locks
    assert [lk for lk in locks if lk[0] == "OFDLCK"] == [("OFDLCK", "READ", -1, "0", "EOF")]


def test_lock_on_deleted_overmounted_and_lazily_unmounted_files(case):
    """Locks on a deleted file, on a file under an overmount, on a file of a lazily unmounted mount."""
    setup = """mkdir /mnt/t /mnt/u; mount -t tmpfs t /mnt/t; mount -t tmpfs u /mnt/u
echo gone > /mnt/t/gone; mkdir /mnt/t/under; echo hidden > /mnt/t/under/h; echo lazy > /mnt/u/l
""" + py_hold(LOCKER + """
g = os.open("/mnt/t/gone", os.O_RDWR); fcntl.lockf(g, fcntl.LOCK_EX, 4, 2); os.unlink("/mnt/t/gone")
h = os.open("/mnt/t/under/h", os.O_RDWR); fcntl.flock(h, fcntl.LOCK_SH)
import subprocess
subprocess.run(["mount", "-t", "tmpfs", "over", "/mnt/t/under"], check=True)
l = os.open("/mnt/u/l", os.O_RDWR); ofd(l, fcntl.F_WRLCK, 0, 1)
subprocess.run(["umount", "-l", "/mnt/u"], check=True)
""")
    locks = _roundtrip(case, setup)
    assert {k for k, *_ in locks} == {"POSIX", "FLOCK", "OFDLCK"}, locks


def test_blocked_waiter_refused_unstopped(case):
    """A process of the tree blocked in F_SETLKW: refused before the stop, naming the process."""
    setup = STOP_WATCH + "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f\n" + py_hold(LOCKER + """
f = os.open("/mnt/t/f", os.O_RDWR); fcntl.lockf(f, fcntl.LOCK_EX)
if os.fork() == 0:
    ready()
    g = os.open("/mnt/t/f", os.O_RDWR); fcntl.lockf(g, fcntl.LOCK_EX)
    os._exit(0)
import time; time.sleep(0.3)
""")
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ waits for a POSIX WRITE lock on inode \S+: a blocked lock wait "
                                  r"cannot be restored")


def test_write_lease_refused_unstopped(case):
    """A write lease: refused before the stop (dump's reads of the files would break it)."""
    setup = STOP_WATCH + "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f\n" + py_hold(LOCKER + """
f = os.open("/mnt/t/f", os.O_WRONLY); fcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_WRLCK)
""")
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ fd \d+ \(/mnt/t/f\): a LEASE WRITE lease \(a write lease: dump "
                                  r"reads the files of the tree's mounts, and that open breaks it\)")


def test_flock_of_a_process_gone_refused_unstopped(case):
    """A flock taken by a process that left the tree (the description held by its child): refused
    before the stop, naming the lock, the taker and the file."""
    setup = STOP_WATCH + "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f\n" + py_hold(LOCKER + """
r, w = os.pipe()
if os.fork() == 0:
    f = os.open("/mnt/t/f", os.O_RDWR); fcntl.flock(f, fcntl.LOCK_EX)
    if os.fork():
        os._exit(0)
    import signal
    ready()
    os.close(w)
    while True:
        signal.pause()
os.close(w); os.read(r, 1)
import time; time.sleep(0.2)
""")
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ fd \d+ \(/mnt/t/f\): a FLOCK WRITE lock taken by process \d+, "
                                  r"which holds no fd of that open file now .*")
