"""Engine round trips of file locks (engine/filelocks.py): flock, POSIX ranges, OFD locks and
leases held by the tree are taken again by the restored processes, in the right process and on the
right open file description; what restore cannot make exactly is refused before the stop.

The snapshot compares each fd's locks (zdtm/snapshot.py); the tests also read /proc/locks with
the restored pids.
"""

from __future__ import annotations

import os
import re

import pytest

from engine.filelocks import inode_key
from enginecase import STOP_WATCH, case, py_hold, was_stopped  # noqa: F401  (fixture)
from test_engine_prestop import _refused_unstopped

LOCKER = """
import fcntl, struct
def ofd(fd, kind, start, length):
    fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", kind, 0, start, length, 0))   # F_OFD_SETLK
def wait_blocked(fd):   # until /proc/locks shows a waiter on fd's file (a child blocked in a lock wait)
    import time   # (that file's lines only: every OFD lock of the machine shows in any pid namespace)
    st = os.fstat(fd)
    me = f" {os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    deadline = time.monotonic() + 60
    while not any(line.split()[1] == "->" and me in line for line in open("/proc/locks")):
        assert time.monotonic() < deadline, "no lock waiter in /proc/locks"
        time.sleep(0.01)
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
            inodes.add(inode_key(st.st_dev, st.st_ino))
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
wait_blocked(f)
""")
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ waits for a POSIX WRITE lock on inode \S+: a blocked lock wait "
                                  r"cannot be restored")


def test_waiter_stopped_before_the_dump_refused_unstopped(case):
    """A process of the tree stopped (SIGSTOP) while blocked in flock: the stop took it off the
    lock's wait list, so /proc/locks shows no waiter; its interrupted call is seen (its syscall
    file) and refused before the dump stops the tree."""
    setup = STOP_WATCH + "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f\n" + py_hold(LOCKER + """
import signal, time
f = os.open("/mnt/t/f", os.O_RDWR); fcntl.flock(f, fcntl.LOCK_EX)
c = os.fork()
if c == 0:
    ready()
    g = os.open("/mnt/t/f", os.O_RDWR); fcntl.flock(g, fcntl.LOCK_EX)
    os._exit(0)
wait_blocked(f)
os.kill(c, signal.SIGSTOP)
while open(f"/proc/{c}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
    time.sleep(0.01)
""")
    pid = case.start(setup)
    from zdtm.snapshot import tree_pids
    stopped = [p for p in tree_pids(pid) if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "T"]
    assert len(stopped) == 1, stopped
    assert not any("->" in line and f" {stopped[0]} " in line for line in open("/proc/locks")), \
        "a stopped waiter shows in /proc/locks: this test no longer tests what it says"
    _refused_unstopped(case, pid, rf"process {stopped[0]} waits for a lock \(stopped while blocked in flock\): a "
                                  r"blocked lock wait cannot be restored")
    assert open(f"/proc/{stopped[0]}/stat").read().rsplit(")", 1)[1].split()[0] == "T", "not left stopped"


def _until(cond, timeout: float = 60.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_wait_begun_after_the_precheck_refused_once_stopped():
    """A wait the precheck did not see (begun after it read /proc/locks) is found once the tree is
    stopped, by the interrupted call in the task's syscall file; the message says so."""
    import fcntl
    import signal
    import subprocess
    import sys
    from engine import filelocks
    from engine.fds import FdError
    path = f"/tmp/mntcr-locks-{os.getpid()}"
    f = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
        waiter = subprocess.Popen([sys.executable, "-S", "-c", "import fcntl, os\n"
                                   f"fcntl.flock(os.open({path!r}, os.O_RDWR), fcntl.LOCK_EX)"])
        try:
            _until(lambda: f" {waiter.pid} " in "".join(line for line in open("/proc/locks") if "->" in line))
            os.kill(waiter.pid, signal.SIGSTOP)
            _until(lambda: open(f"/proc/{waiter.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T")
            with pytest.raises(FdError, match=rf"process {waiter.pid} waits for a lock \(blocked in flock when "
                                              r"the tree stopped\)"):
                filelocks.refuse_stopped_waiters([waiter.pid], set())
        finally:
            waiter.kill()
            waiter.wait()
    finally:
        os.close(f)
        os.unlink(path)


def test_write_lease_refused_unstopped(case):
    """A write lease: refused before the stop (dump's reads of the files would break it)."""
    setup = STOP_WATCH + "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f\n" + py_hold(LOCKER + """
f = os.open("/mnt/t/f", os.O_WRONLY); fcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_WRLCK)
""")
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ fd \d+ \(/mnt/t/f\): a LEASE WRITE lease \(a write lease: dump "
                                  r"reads the files of the tree's mounts, and that open breaks it\)")


def test_write_lease_on_detached_mount_refused_unbroken(case):
    """A write lease on a file of a lazily unmounted tmpfs whose only visible mount shows another
    directory: refused before the stop, and the lease is not broken on the way (the detached-mount
    check opens such a file to locate it: the lock check comes first), so its holder lives on."""
    setup = STOP_WATCH + """mkdir /mnt/t /mnt/v; mount -t tmpfs t /mnt/t; mkdir /mnt/t/a /mnt/t/v
echo x > /mnt/t/a/f; mount --bind /mnt/t/v /mnt/v
""" + py_hold(LOCKER + """
f = os.open("/mnt/t/a/f", os.O_WRONLY); fcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_WRLCK)
import subprocess; subprocess.run(["umount", "-l", "/mnt/t"], check=True)
""")
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ fd \d+ \(/a/f\): a LEASE WRITE lease \(a write lease: dump "
                                  r"reads the files of the tree's mounts, and that open breaks it\)")
    with open("/proc/locks") as f:
        mine = [line for line in f if line.split()[1:2] == ["LEASE"] and line.split()[4] == str(pid)]
    assert len(mine) == 1 and " ACTIVE " in mine[0] and " WRITE " in mine[0], mine


def _flocks_on(pid: int, path: str) -> list[str]:
    """The /proc/locks lines (without their number) of FLOCK locks on file `path` of process `pid`."""
    st = os.stat(f"/proc/{pid}/root{path}")
    inode = inode_key(st.st_dev, st.st_ino)
    with open("/proc/locks") as f:
        return [" ".join(line.split()[1:]) for line in f if "FLOCK" in line and f" {inode} " in line]


def test_flock_of_a_process_gone(case):
    """The shell's `exec 9>f; flock 9`: flock(1) took the lock and exited, the shell's description
    holds it. Restored on that description, taken by a process that is gone too (the restorer):
    /proc/locks names no process of the tree, before as after, and the lock still excludes."""
    from enginecase import take, assert_same
    from zdtm.snapshot import tree_pids
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t\nexec 9>/mnt/t/f\nflock 9\n" + py_hold("")
    pid = case.start(setup)
    first = take(pid)
    before = _flocks_on(pid, "/mnt/t/f")
    assert len(before) == 1 and int(before[0].split()[3]) not in tree_pids(pid), before
    pid = case.cr(pid)
    assert_same(first, take(pid))
    after = _flocks_on(pid, "/mnt/t/f")
    assert len(after) == 1 and after[0].split()[:3] == ["FLOCK", "ADVISORY", "WRITE"], after
    assert int(after[0].split()[3]) not in tree_pids(pid), after
    probe = os.open(f"/proc/{pid}/root/mnt/t/f", os.O_RDONLY)
    try:
        import fcntl
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(probe)


def test_flock_of_a_parent_that_closed_its_fd(case):
    """CRIU's file_locks03: a flock taken before fork, the taker's fd closed since, the child holds
    the description: taken again by the parent's stand-in (the pid /proc/locks shows) through a
    copy of the child's fd."""
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f\n" + py_hold(LOCKER + """
f = os.open("/mnt/t/f", os.O_RDWR); fcntl.flock(f, fcntl.LOCK_EX)
r, w = os.pipe()
if os.fork() == 0:
    import signal
    ready()
    os.close(w)
    while True:
        signal.pause()
os.close(w); os.read(r, 1); os.close(f)
g = os.open("/mnt/t/f", os.O_RDWR); fcntl.lockf(g, fcntl.LOCK_EX, 2, 1)
""")
    locks = _roundtrip(case, setup)
    # (its POSIX lock on that file survives the close of the copy it took the flock through)
    assert locks == [("FLOCK", "WRITE", 0, "0", "EOF"), ("POSIX", "WRITE", 0, "1", "2")], locks


HOSTILE = [   # (mutation of a process's first lock, the validator's words)
    (lambda lk, p: lk.update(fd=999), r"the process has no such fd"),
    (lambda lk, p: lk.update(type="mandatory"), r"'locks\[0\].type' must be posix, flock, ofd or lease"),
    (lambda lk, p: lk.update(mode="rw"), r"'locks\[0\].mode' must be read or write"),
    (lambda lk, p: lk.update(start=-1), r"'locks\[0\].start' out of range"),
    (lambda lk, p: lk.update(start=5, end=4), r"its range ends before it starts"),
    (lambda lk, p: lk.update(type="flock", start=3), r"a flock covers the whole file"),
    (lambda lk, p: lk.update(end="EOF"), r"'locks\[0\].end' must be an integer"),
    (lambda lk, p: lk.update(extra=1), r"extra"),
    (lambda lk, p: lk.update(type="lease", start=0, end=None, fd=next(f["fd"] for f in p["fds"]
                                                                      if f.get("type") == "dir")),
     r"a lease is on a regular file"),
    (lambda lk, p: p["locks"].append(dict(lk)), r"listed twice"),
    # (dump refuses one: its open breaks it; on a file of the host, every open of it waits for the stand-in)
    (lambda lk, p: lk.update(type="lease", start=0, end=None), r"a write lease: dump never records one"),
    (lambda lk, p: p.update(locks="all"), r"'locks' must be a list"),
    (lambda lk, p: lk.update(of=p["pid"]), r"'of' names a flock lock's holder"),
    (lambda lk, p: lk.update(type="flock", start=0, end=None, of=4000000), r"'of' names a flock lock's holder"),
]


def test_hostile_lock_records_refused(case):
    """An image's locks are untrusted: each hostile value is refused by the validator with one line
    naming it, and `mntcr restore` exits 2 with that one line."""
    import json
    from engine import image, imageformat
    from enginecase import RESTORE_EXTERNALS, mntcr
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f; exec 7</mnt/t\n" + py_hold(LOCKER + """
f = os.open("/mnt/t/f", os.O_RDWR); fcntl.lockf(f, fcntl.LOCK_EX, 4, 2)
""")
    pid = case.start(setup)
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        good = json.load(f)
    lk = next(p for p in good["processes"] if p.get("locks"))["locks"]
    assert lk == [{"fd": lk[0]["fd"], "type": "posix", "mode": "write", "start": 2, "end": 5}], lk
    imageformat.validate(json.loads(json.dumps(good)))
    assert f"    lock: posix write bytes 2-5 on fd {lk[0]['fd']}\n" in image.render(good)   # (mntcr show)
    for n, (mutate, words) in enumerate(HOSTILE):
        doc = json.loads(json.dumps(good))
        p = next(p for p in doc["processes"] if p.get("locks"))
        mutate(p["locks"][0], p)
        try:
            imageformat.validate(doc)
        except image.ImageError as e:
            assert re.search(words, str(e)) and "\n" not in str(e), (n, str(e))
        else:
            raise AssertionError(f"hostile lock #{n} passed: {p['locks']}")
    next(p for p in good["processes"] if p.get("locks"))["locks"][0]["fd"] = 999
    with open(os.path.join(images, "mntcr.json"), "w") as f:
        json.dump(good, f)
    r = mntcr("restore", "-D", images, *RESTORE_EXTERNALS)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such fd" in r.stderr, r.stderr


def test_parse_and_settle():
    """fdinfo lines parsed; a description's flock kept once, on its taker's fd; an OFD lock on the
    first holder; a flock whose taker holds no fd of it refused naming lock, taker and file."""
    from engine import filelocks
    from engine.fds import FdError
    lk = filelocks.parse("1: POSIX  ADVISORY  READ 28922 fe:00:2261034 5 14")
    assert (lk["type"], lk["mode"], lk["pid"], lk["start"], lk["end"], lk["waiter"]) == ("posix", "read", 28922, 5, 14, False)
    assert filelocks.parse("2: -> FLOCK  ADVISORY  WRITE 7 fe:00:1 0 EOF")["waiter"]
    fl = filelocks.parse("1: FLOCK  ADVISORY  WRITE 10 fe:00:1 0 EOF")
    of = filelocks.parse("1: OFDLCK ADVISORY  WRITE -1 fe:00:2 3 9")
    procs = [{"pid": 10, "fds": [{"fd": 3, "desc": "d-0"}, {"fd": 4, "desc": "d-1"}]},
             {"pid": 11, "fds": [{"fd": 3, "desc": "d-0"}, {"fd": 4, "desc": "d-1"}]}]
    seen = {(p, n): ("/f", [fl] if n == 3 else [of]) for p in (10, 11) for n in (3, 4)}
    filelocks.settle(procs, seen)
    assert procs[0]["locks"] == [{"fd": 3, "type": "flock", "mode": "write", "start": 0, "end": None},
                                 {"fd": 4, "type": "ofd", "mode": "write", "start": 3, "end": 9}]
    assert "locks" not in procs[1]
    procs = [{"pid": 10, "fds": []}, {"pid": 11, "fds": [{"fd": 3}]}]
    filelocks.settle(procs, {(11, 3): ("/f", [fl])})
    assert procs[0]["locks"] == [{"fd": 3, "type": "flock", "mode": "write", "start": 0, "end": None, "of": 11}]
    alive = dict(fl, pid=os.getpid())          # a taker alive outside the tree: refused
    procs = [{"pid": 11, "fds": [{"fd": 3}]}]
    try:
        filelocks.settle(procs, {(11, 3): ("/f", [alive])})
    except FdError as e:
        assert str(e.strerror).startswith(f"process 11 fd 3 (/f): a FLOCK WRITE lock taken by process {os.getpid()}, "
                                          "which is alive outside the dumped tree"), e
    else:
        raise AssertionError("a flock of a live process outside the tree passed")
    gone = dict(fl, pid=1 << 23)               # above any pid_max: a taker that is gone
    procs = [{"pid": 11, "fds": [{"fd": 3}]}]
    filelocks.settle(procs, {(11, 3): ("/f", [gone])})
    assert procs[0]["locks"] == [{"fd": 3, "type": "flock", "mode": "write", "start": 0, "end": None, "gone": True}]
    for line, words in (("1: POSIX  MANDATORY WRITE 1 fe:00:1 0 EOF", "mandatory locks are not supported"),
                        ("1: LEASE  BREAKING  READ 1 fe:00:1 0 EOF", "a lease being broken"),
                        ("1: DELEG  ACTIVE    READ 1 fe:00:1 0 EOF", "DELEG locks are not supported")):
        try:
            filelocks.fd_locks([line], "process 1 fd 3 (/f)")
        except FdError as e:
            assert words in str(e.strerror), e
        else:
            raise AssertionError(f"{line} passed")


# The child locks a byte of /etc/passwd (a bind of the host's), then unshares and unmounts /etc:
# an fd declared --external file[], whose lock is taken again on the file restore opens.
EXTERNAL_LOCKED = """
cat > /run/lk.py <<'PY'
import fcntl, os
fcntl.lockf(7, fcntl.LOCK_SH, 1, 0)
os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
PY
sh -c 'exec 7</etc/passwd; exec unshare -m sh -c "umount /etc; exec python3 /run/lk.py"' &
hold
"""


def test_lock_on_an_external_file(case):
    """A POSIX lock on an fd declared --external file[]: taken again on the host file restore opens."""
    from enginecase import take, assert_same
    from zdtm.snapshot import tree_pids
    pid = case.start(EXTERNAL_LOCKED)
    child = next(p for p in tree_pids(pid) if p != pid)
    before, locks = take(child), _tree_locks(child)
    assert locks == [("POSIX", "READ", 0, "0", "0")], locks
    images = case.new_images_dir()
    from enginecase import mntcr   # (/usr external only: the child unmounted /etc)
    r = mntcr("dump", "-t", str(child), "-D", images, "--external", "mnt[/usr]:usr", "--external", "file[/etc/passwd]:pw")
    assert r.returncode == 0, r.stderr
    restored = case.restore(images, ("--external", "file[pw]:/etc/passwd"))
    assert _tree_locks(restored) == locks
    assert_same(before, take(restored))


def test_blocked_ofd_waiter_refused_unstopped(case):
    """A process of the tree blocked in F_OFD_SETLKW (/proc/locks names no pid for it): found by its
    syscall, refused before the stop."""
    setup = STOP_WATCH + "mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f\n" + py_hold(LOCKER + """
f = os.open("/mnt/t/f", os.O_RDWR); ofd(f, fcntl.F_WRLCK, 0, 0)
if os.fork() == 0:
    ready()
    g = os.open("/mnt/t/f", os.O_RDWR)
    fcntl.fcntl(g, 38, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))   # F_OFD_SETLKW: blocks
    os._exit(0)
wait_blocked(f)
""")
    pid = case.start(setup)
    _refused_unstopped(case, pid, r"process \d+ waits for a lock \(an OFD lock is waited for on inode \S+\): a blocked "
                                  r"lock wait cannot be restored")
