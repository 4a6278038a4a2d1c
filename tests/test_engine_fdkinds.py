"""Engine round trips of fds that are not plain files: pipes (buffered data, a full pipe, a pipe
whose writer is gone, ends shared across processes), FIFOs (beneath an overmount, on a detached
mount), eventfd, signalfd, timerfd, epoll (also watching another epoll), memfd, O_PATH; and the
refusal of a kind the engine does not restore (the tree keeps running).

The snapshot (zdtm/snapshot.py) compares each fd's kind details and which fds share an object
or an open file description; the tests also read the restored state directly.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from enginecase import STOP_WATCH, CRError, case, was_stopped  # noqa: F401  (fixture)
from enginecase import py_hold as _py_hold

# Abstract unix names are the network namespace's, which these trees share with the host: a suffix
# of this run's own keeps two runs apart (xdist workers, another checkout's tests on the machine: a
# name taken there failed the setup with EADDRINUSE, or sent a datagram into the other run's tree).
RUN = os.urandom(4).hex()


def py_hold(body: str) -> str:
    """enginecase.py_hold, each @RUN in `body` this run's suffix."""
    return _py_hold(body.replace("@RUN", RUN))


def _lines(state, pid_index=None) -> list[str]:
    p = state.root if pid_index is None else state.snap.procs[pid_index]
    return p.fds


def _fd(state, n: int) -> str:
    return next(line for line in state.root.fds if line.startswith(f"{n}: "))


def _first_child(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


def _grab_socket(pid: int, fd: int):
    """A socket object on a copy of fd `fd` of process `pid` (pidfd_getfd)."""
    import socket
    from engine.fds import sys as fsys
    pidfd = os.pidfd_open(pid)
    try:
        return socket.socket(fileno=fsys.pidfd_getfd(pidfd, fd))
    finally:
        os.close(pidfd)


def _refused_unstopped(case, setup: str, pattern: str) -> int:
    """Start `setup` behind STOP_WATCH; dump must refuse it with a line matching `pattern` without
    ever stopping the tree. Returns the tree's pid."""
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(pattern, str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    return pid


# Python lines that keep /mnt/t alive by a directory fd (11), then lazily unmount it.
_DETACH_MNT_T = """
os.dup2(os.open("/mnt/t", os.O_RDONLY | os.O_DIRECTORY), 11)
subprocess.run(["umount", "-l", "/mnt/t"], check=True)
"""


def test_pipe_data_and_ends(case):
    """A pipe with data both ends held, a full pipe, a pipe whose writer is gone (data kept)."""
    setup = py_hold("""
import fcntl
r, w = os.pipe(); os.write(w, b"hello pipe"); os.dup2(r, 10); os.dup2(w, 11)
r2, w2 = os.pipe(); fcntl.fcntl(w2, fcntl.F_SETFL, os.O_NONBLOCK)
try:
    while True: os.write(w2, b"x" * 4096)
except BlockingIOError:
    pass
os.dup2(r2, 12); os.dup2(w2, 13)
r3, w3 = os.pipe(); os.write(w3, b"orphaned"); os.close(w3); os.dup2(r3, 14)
for fd in (r, w, r2, w2, r3): os.close(fd)
""")
    before, after = case.roundtrip(setup)
    assert "bytes=10" in _fd(after, 10) and "pipe" in _fd(after, 10)
    assert "bytes=65536" in _fd(after, 12)
    assert "bytes=8" in _fd(after, 14)
    assert "flags=4001" in _fd(after, 13)   # O_NONBLOCK|O_WRONLY kept on the write end


def test_pipe_shared_by_two_processes(case):
    """A child holds the read end, the parent the write end and a dup of it: one pipe, one description."""
    setup = py_hold("""
r, w = os.pipe(); os.write(w, b"data")
if os.fork() == 0:
    os.close(w); os.dup2(r, 20)
else:
    os.close(r); os.dup2(w, 21); os.dup2(w, 22); os.close(w)
""")
    before, after = case.roundtrip(setup)
    lines = after.snap.sharing.splitlines()
    # Parent (P0 or P1) holds 21+22 as one description; the child 20 (+ the holder's pipe fd 3).
    assert any(re.fullmatch(r"description P(\d):21 P\1:22", line) for line in lines), lines
    assert any(re.fullmatch(r"pipe (P\d:\d+ ?){4}", line) and ":20" in line and ":21" in line for line in lines), lines


def test_eventfd_signalfd_timerfd_epoll(case):
    """Counters, masks, timers and an epoll watching them and another epoll, with the data words."""
    setup = py_hold("""
import select, signal, ctypes
e = os.eventfd(7, os.EFD_SEMAPHORE | os.EFD_NONBLOCK); os.dup2(e, 10)
libc = ctypes.CDLL(None, use_errno=True)
mask = ctypes.c_uint64((1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGHUP - 1)))
s = libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK); os.dup2(s, 11)
class TS(ctypes.Structure): _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
class ITS(ctypes.Structure): _fields_ = [("i", TS), ("v", TS)]
t = libc.timerfd_create(1, 0); libc.timerfd_settime(t, 0, ctypes.byref(ITS(TS(30, 0), TS(3000, 0))), None)
os.dup2(t, 12)
t2 = libc.timerfd_create(0, 0); os.dup2(t2, 13)   # never armed
inner = select.epoll(); inner.register(10, select.EPOLLIN); os.dup2(inner.fileno(), 14)
outer = select.epoll(); outer.register(14, select.EPOLLIN); outer.register(12, select.EPOLLIN | select.EPOLLET)
os.dup2(outer.fileno(), 15)
for fd in (e, s, t, t2): os.close(fd)
""")
    before, after = case.roundtrip(setup)
    assert "count=7 semaphore=1" in _fd(after, 10)
    assert "sigmask=0000000000000201" in _fd(after, 11)
    assert "clockid=1 interval=(30, 0) armed=True" in _fd(after, 12)
    assert "armed=False" in _fd(after, 13)
    # Python's epoll leaves the upper half of the data word unset: compare the fd half only.
    assert re.search(r"targets=10:19:[0-9a-f]*a$", _fd(after, 14))
    assert re.search(r"targets=12:80000019:[0-9a-f]*c,14:19:[0-9a-f]*e$", _fd(after, 15))


def test_epoll_target_the_process_holds_at_no_number_refused_unstopped(case):
    """An epoll whose target's fd was closed while a child still holds the file (so epoll keeps
    it): restore could not name it again in the owner. Refused naming the epoll and the number,
    before the stop."""
    pid = case.start(STOP_WATCH + py_hold("""
import select
r, w = os.pipe(); os.dup2(r, 10); os.close(r)
ep = select.epoll(); ep.register(10, select.EPOLLIN); os.dup2(ep.fileno(), 11); ep.close()
if os.fork() != 0:
    os.close(10)
"""))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"process \d+ fd 11 \(anon_inode:\[eventpoll\]\): epoll target fd 10 is no longer open at "
                     "that number, and the process holds its file at no other", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


@pytest.mark.parametrize("strategy", ["", "sources=yard"])
def test_memfd_and_o_path(case, strategy, monkeypatch):
    """A sealed memfd with content at an offset, a second description of it, an O_PATH fd.

    sources=yard (Linux < 6.15): the restorer's "/" is the yard, so the second description is
    opened through the host's /proc (it failed with ENOENT on /proc/self/fd in a 6.1 VM).
    """
    if strategy:
        monkeypatch.setenv("MNTCR_STRATEGY", strategy)
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo x > /mnt/t/f
""" + py_hold("""
import fcntl
m = os.memfd_create("state", os.MFD_ALLOW_SEALING); os.write(m, b"memfd content"); os.lseek(m, 3, 0)
fcntl.fcntl(m, 1033, 8 | 4)   # F_ADD_SEALS: F_SEAL_WRITE | F_SEAL_GROW
os.dup2(m, 10); os.dup2(os.open(f"/proc/self/fd/{m}", os.O_RDONLY), 11)
os.dup2(os.open("/mnt/t/f", os.O_PATH), 12)
""")
    before, after = case.roundtrip(setup)
    assert "/memfd:state (deleted)" in _fd(after, 10) and "pos=3" in _fd(after, 10)
    assert "seals=12 size=13" in _fd(after, 10)
    assert "pos=0" in _fd(after, 11)
    assert _fd(after, 12).startswith("12: /mnt/t/f flags=10000000")


@pytest.mark.parametrize("strategy", ["", "sources=yard"])
def test_anonymous_shared_memory_fd(case, strategy, monkeypatch):
    """An fd on anonymous shared memory (opened through /proc/self/map_files, then unmapped: CRIU's
    shmemfd), O_APPEND, with content and an offset, and a second description of it: restored as
    "/dev/zero (deleted)" of the kernel's shmem mount with that content, offset and flags."""
    if strategy:
        monkeypatch.setenv("MNTCR_STRATEGY", strategy)
    setup = py_hold("""
import ctypes, fcntl, mmap
libc = ctypes.CDLL(None, use_errno=True); libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
a = libc.mmap(None, 4096, 3, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
fd = os.open(f"/proc/self/map_files/{a:x}-{a + 4096:x}", os.O_RDWR)
libc.munmap(ctypes.c_void_p(a), ctypes.c_size_t(4096))
os.ftruncate(fd, 0); os.write(fd, b"shared memory"); os.lseek(fd, 3, 0)
fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)
os.dup2(fd, 10); os.dup2(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY), 11)
""")
    before, after = case.roundtrip(setup)
    assert _fd(after, 10).startswith("10: /dev/zero (deleted) flags=2002 pos=3"), _fd(after, 10)
    assert _fd(after, 11).startswith("11: /dev/zero (deleted) flags=0 pos=0"), _fd(after, 11)
    with open(f"/proc/{after.pid}/fd/11", "rb") as f:
        assert f.read() == b"shared memory"
    assert os.stat(f"/proc/{after.pid}/fd/10").st_ino == os.stat(f"/proc/{after.pid}/fd/11").st_ino


def test_fifo_beneath_overmount_and_detached(case):
    """A FIFO with data opened before its directory was covered, and one on a lazily unmounted tmpfs."""
    setup = """
mkdir /mnt/t /mnt/d; mount -t tmpfs t /mnt/t; mount -t tmpfs d /mnt/d
mkfifo /mnt/t/fifo /mnt/d/fifo
exec 5<>/mnt/t/fifo; echo buffered >&5; exec 6</mnt/t/fifo
exec 7<>/mnt/d/fifo; echo other >&7
mount -t tmpfs cover /mnt/t
umount -l /mnt/d
hold
"""
    before, after = case.roundtrip(setup, check="ls /mnt/t")
    assert "bytes=9" in _fd(after, 5) and "mnt=/mnt/t" in _fd(after, 5)
    assert "mnt=detached bytes=6" in _fd(after, 7)
    assert "pipe P0:5 P0:6" in after.snap.sharing


def test_fifo_opened_o_path(case):
    """containerd-shim keeps O_PATH fds on the FIFOs of a container's stdio beside its read and write
    ones: each came back opened for reading (a FIFO's restore opened only with the access mode)."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkfifo /mnt/t/fifo
""" + py_hold("""
w = os.open("/mnt/t/fifo", os.O_RDWR | os.O_NONBLOCK); os.write(w, b"kept")
os.dup2(w, 5); os.close(w)
p = os.open("/mnt/t/fifo", os.O_PATH); os.dup2(p, 6, inheritable=False); os.close(p)
""")
    before, after = case.roundtrip(setup)
    assert _fd(before, 6).startswith("6: /mnt/t/fifo flags=12000000 "), _fd(before, 6)
    assert _fd(after, 6) == _fd(before, 6)
    assert "bytes=4" in _fd(after, 5)


def test_unsupported_kind_refused_tree_kept(case):
    """An inet socket is refused at dump naming the fd and kind; the tree keeps running."""
    setup = py_hold("""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); os.dup2(s.fileno(), 10); os.close(s.detach())
""")
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"process \d+ fd 10 \(socket:\[\d+\]\): .*socket.* not supported", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in "SR"


def test_unix_sockets(case):
    """A socket pair across two processes with queued data both ways, an unbound socket, an abstract
    listening socket, a path-bound listening one and a path-bound datagram one."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
a, b = socket.socketpair(); a.send(b"to b"); b.send(b"to a!")
sp_a, sp_b = a.detach(), b.detach()
if os.fork() == 0:
    os.dup2(sp_b, 20); os.close(sp_a); os.close(sp_b)
else:
    os.dup2(sp_a, 21); os.close(sp_a); os.close(sp_b)
    u = socket.socket(socket.AF_UNIX); os.dup2(u.fileno(), 22)
    ab = socket.socket(socket.AF_UNIX); ab.bind(b"\\0zdtm-abstract@RUN"); ab.listen(7); os.dup2(ab.fileno(), 23)
    ls = socket.socket(socket.AF_UNIX); ls.bind("/mnt/t/listen.sock"); ls.listen(); os.dup2(ls.fileno(), 24)
    dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); dg.bind("/mnt/t/dgram.sock"); os.dup2(dg.fileno(), 25)
    for s in (u, ab, ls, dg): s.close()
""")
    before, after = case.roundtrip(setup, check="ls -l /mnt/t | cut -c1")
    lines = after.snap.sharing.splitlines()
    assert any(re.fullmatch(r"socketpair P\d:2[01] \| P\d:2[01]", line) for line in lines), lines
    assert "inq=5" in _fd(after, 21)
    assert f"name=b'\\x00zdtm-abstract{RUN}' listening=1" in _fd(after, 23)
    assert "name='/mnt/t/listen.sock' listening=1" in _fd(after, 24)
    assert "name='/mnt/t/dgram.sock' listening=0" in _fd(after, 25)


def test_listener_keeps_the_ids_it_listened_with(case):
    """A root process that listened as euid 1000 with groups 10 and 20 (a server that drops
    privileges around listen()) and one as root: what a client is told of the server (SO_PEERCRED,
    SO_PEERGROUPS; dbus checks them) shows the same ids and groups after restore, not the
    restorer's, and the pid of the restored process that holds the socket (not a helper's); one
    that listened in a child gone since keeps its groups and shows no live process."""
    import socket
    import struct
    from engine.fds import unix_bind
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t\n" + py_hold("""
import socket
ls = socket.socket(socket.AF_UNIX); ls.bind("/mnt/t/user.sock")
os.setgroups([10, 20]); os.setresgid(-1, 1001, -1); os.setresuid(-1, 1000, -1); ls.listen()
os.setresuid(-1, 0, -1); os.setresgid(-1, 0, -1); os.setgroups([])
os.dup2(ls.fileno(), 20); ls.close()
rs = socket.socket(socket.AF_UNIX); rs.bind("/mnt/t/root.sock"); rs.listen(); os.dup2(rs.fileno(), 21); rs.close()
gs = socket.socket(socket.AF_UNIX); gs.bind("/mnt/t/gone.sock")
kid = os.fork()
if kid == 0:
    os.setgroups([30]); gs.listen(); os._exit(0)
os.waitpid(kid, 0); os.dup2(gs.fileno(), 22); gs.close()
""")
    before, after = case.roundtrip(setup)
    assert "peercred=pid:P0 ids=1000:1001 groups=10,20" in _fd(after, 20), _fd(after, 20)
    # (one that listened in a process gone since, a daemon's parent: its clients see no live process)
    assert "peercred=pid:outside ids=0:0 groups=30" in _fd(after, 22), _fd(after, 22)
    for fd, name, ids, groups in ((20, "user", (1000, 1001), [10, 20]), (21, "root", (0, 0), []),
                                  (22, "gone", (0, 0), [30])):
        s = _grab_socket(after.pid, fd)
        try:
            _, uid, gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            assert ((uid, gid), unix_bind.listener_groups(s)) == (ids, groups), (fd, uid, gid)
        finally:
            s.close()
        c = socket.socket(socket.AF_UNIX)
        try:   # (a client, through the restored tree's root)
            c.connect(f"/proc/{after.pid}/root/mnt/t/{name}.sock")
            got = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            assert got[1:] == ids and (got[0] == after.pid) == (fd != 22), (fd, got, after.pid)
            assert unix_bind.listener_groups(c) == groups
        finally:
            c.close()


def test_inotify_watches(case):
    """Watches on a directory and a file of a tmpfs, with a gap in the wds (a watch removed), seen
    through a bind of a subdirectory too; events after restore reach the restored instance, and none
    of the restore's own (the gap's IN_IGNORED) waits there."""
    setup = """
mkdir /mnt/t /mnt/b; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d /mnt/t/e; touch /mnt/t/d/f /mnt/t/e/g
mount --bind /mnt/t/e /mnt/b
""" + py_hold("""
import ctypes
libc = ctypes.CDLL(None)
i = libc.inotify_init1(os.O_NONBLOCK)
libc.inotify_add_watch(i, b"/mnt/t/d", 0x100 | 0x200)
gone = libc.inotify_add_watch(i, b"/mnt/t", 0x2); libc.inotify_rm_watch(i, gone)
assert len(os.read(i, 4096)) == 16   # (its IN_IGNORED, read: unread events are refused)
libc.inotify_add_watch(i, b"/mnt/t/d/f", 0x2)
libc.inotify_add_watch(i, b"/mnt/b/g", 0x4)
os.dup2(i, 10); os.close(i)
""")
    before, after = case.roundtrip(setup)
    assert "watches=1:300,3:2,4:4" in _fd(after, 10), _fd(after, 10)


def test_inotify_watch_no_mount_reaches_refused_unstopped(case):
    """An inotify watch on a file of a tmpfs lazily unmounted since (a directory fd keeps it alive):
    no mount of the tree reaches the watched inode, so restore could not watch it again. Refused
    naming the fd and the watch, before the stop."""
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t; touch /mnt/t/f\n" + py_hold("""
import ctypes, subprocess
libc = ctypes.CDLL(None)
i = libc.inotify_init1(os.O_NONBLOCK)
assert libc.inotify_add_watch(i, b"/mnt/t/f", 0x2) == 1
os.dup2(i, 10); os.close(i)
""" + _DETACH_MNT_T)
    _refused_unstopped(case, setup, r"process \d+ fd 10 \(anon_inode:inotify\): inotify watch 1 is on device "
                                    r"\d+:\d+, which no visible mount reaches \(a mount covered by another or "
                                    r"detached, the watcher holding nothing on it\): not supported")


def test_inotify_watch_on_overlay_found_by_inode_number(case):
    """Overlayfs without nfs_export shows a handle it cannot open again (ESTALE): a watch on an
    overlay directory (dbus-daemon's on /usr/share/dbus-1 in a VM guest whose root is an overlay)
    is found by its inode number and comes back on the same directory."""
    setup = """
mkdir /mnt/t /mnt/o; mount -t tmpfs t /mnt/t; mkdir -p /mnt/t/l/share/dbus-1/services /mnt/t/u /mnt/t/w
mount -t overlay overlay -o lowerdir=/mnt/t/l,upperdir=/mnt/t/u,workdir=/mnt/t/w /mnt/o
""" + py_hold("""
import ctypes
libc = ctypes.CDLL(None)
i = libc.inotify_init1(os.O_NONBLOCK)
libc.inotify_add_watch(i, b"/mnt/o/share/dbus-1/services", 0x100)
libc.inotify_add_watch(i, b"/mnt/o", 0x200)
os.dup2(i, 10); os.close(i)
""")
    after = case.roundtrip(setup, iters=2)[-1]   # (the first restore's watches are dumped again)
    assert "watches=1:100,2:200" in _fd(after, 10), _fd(after, 10)
    pid = after.pid
    with open(f"/proc/{pid}/fdinfo/10") as f:
        inos = {int(wd): int(ino, 16) for wd, ino in re.findall(r"inotify wd:(\d+) ino:([0-9a-f]+)", f.read())}
    root = f"/proc/{pid}/root/mnt/o"
    assert inos == {1: os.stat(f"{root}/share/dbus-1/services").st_ino, 2: os.stat(root).st_ino}


def test_inotify_watch_reached_only_from_another_namespace_of_the_tree(case):
    """A watch on a file whose filesystem only another mount namespace of the tree still shows (podman's
    conmon watches the container cgroup's memory.events; the scenario's /sys/fs/cgroup is gone, the
    container's cgroup2 mount shows it): found through that namespace's mount, restored on it."""
    setup = """
mkdir /mnt/w; mount -t tmpfs w /mnt/w; touch /mnt/w/events
""" + py_hold("""
import ctypes, subprocess, time
libc = ctypes.CDLL(None)
i = libc.inotify_init1(os.O_NONBLOCK)
libc.inotify_add_watch(i, b"/mnt/w/events", 0x2)
os.dup2(i, 10); os.close(i)
subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                  "touch /run/copied; exec /.hold/mntcr-hold 100000"],
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not os.path.exists("/run/copied"): time.sleep(0.05)
subprocess.run(["umount", "/mnt/w"], check=True)
""")
    before, after = case.roundtrip(setup)
    assert "watches=1:2" in _fd(after, 10), _fd(after, 10)
    child = _first_child(after.pid)
    with open(f"/proc/{after.pid}/fdinfo/10") as f:
        ino = int(re.search(r"inotify wd:1 ino:([0-9a-f]+)", f.read())[1], 16)
    assert ino == os.stat(f"/proc/{child}/root/mnt/w/events").st_ino
    assert not os.path.exists(f"/proc/{after.pid}/root/mnt/w/events")


def test_ptys_on_devpts_of_the_tree(case):
    """Two pty pairs on a devpts instance of the container (numbers 0 and 2: 1 was closed), the
    slave of one held by a child; termios and window size of the first pair are kept."""
    setup = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
""" + py_hold("""
import fcntl, struct, termios
def pair():
    m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]
    return m, n
m0, n0 = pair(); m1, n1 = pair(); m2, n2 = pair(); os.close(m1)
s0 = os.open(f"/dev/pts/{n0}", os.O_RDWR | os.O_NOCTTY); s2 = os.open(f"/dev/pts/{n2}", os.O_RDWR | os.O_NOCTTY)
fcntl.ioctl(m0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
a = termios.tcgetattr(s0); a[3] &= ~termios.ECHO; termios.tcsetattr(s0, termios.TCSANOW, a)
if os.fork() == 0:
    os.dup2(s2, 12)
else:
    os.dup2(m0, 10); os.dup2(s0, 11); os.dup2(m2, 13)
for fd in (m0, m2, s0, s2): os.close(fd)
""")
    check = """for p in /proc/[0-9]*; do ls -l $p/fd | awk 'NR > 1 && $9 >= 10 {print $9, $11}'; done | sort
stty -F /dev/pts/0 size; stty -F /dev/pts/0 -a | grep -o -- '-\\?echo '"""
    before, after = case.roundtrip(setup, check=check)
    out = after.snap.check_output
    assert "10 /dev/pts/ptmx" in out and "11 /dev/pts/0" in out and "12 /dev/pts/2" in out, out
    assert "40 120" in out and "-echo" in out, out


def test_file_mappings(case):
    """A process maps a file of a tmpfs that is then overmounted, and a file of a bind mount:
    the stand-in maps the same files from the same mounts (maps and map_files show them)."""
    setup = """
mkdir /mnt/t /mnt/b /mnt/src; mount -t tmpfs t /mnt/t; mount -t tmpfs src /mnt/src
head -c 8192 /dev/zero > /mnt/t/lib.so; mkdir /mnt/src/d; head -c 100 /dev/zero > /mnt/src/d/data
mount --bind /mnt/src/d /mnt/b
""" + py_hold("""
import mmap
f1 = open("/mnt/t/lib.so", "rb"); m1 = mmap.mmap(f1.fileno(), 8192, prot=mmap.PROT_READ); f1.close()
f2 = open("/mnt/b/data", "rb"); m2 = mmap.mmap(f2.fileno(), 100, prot=mmap.PROT_READ); f2.close()
import subprocess
subprocess.run(["mount", "-t", "tmpfs", "cover", "/mnt/t"], check=True)
""")
    before, after = case.roundtrip(setup)
    for state in (before, after):
        maps = state.root.maps
        # /mnt/t#1: the first mount at /mnt/t, beneath the cover (topology's label of a stack).
        assert "/mnt/t/lib.so mnt=/mnt/t#1" in maps and "/mnt/b/data mnt=/mnt/b" in maps, maps


def test_unix_socket_bound_through_proc_fd_and_dangling(case):
    """conmon's ways: a listening socket bound as /proc/self/fd/N/attach (its file in a directory
    reached through an fd, which is closed since), and a connected socket whose peer is gone."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir -p /mnt/t/userdata
""" + py_hold("""
import socket
d = os.open("/mnt/t/userdata", os.O_PATH)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.bind(f"/proc/self/fd/{d}/attach"); s.listen(10)
os.dup2(s.fileno(), 10); os.close(d)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET); b.close(); os.dup2(a.fileno(), 11)
""")
    before, after = case.roundtrip(setup, check="ls -l /mnt/t/userdata | cut -c1")
    assert re.search(r"name='/proc/self/fd/\d+/attach' listening=1", _fd(after, 10)), _fd(after, 10)
    assert "connected=True" in _fd(after, 11)
    assert after.snap.check_output.splitlines()[-1] == "s"


@pytest.mark.parametrize("name", ["path", "abstract"])
def test_unix_connection_through_a_listener(case, name):
    """A service listening on a name, a client (another process) connected to it and the accepted
    connection, with data queued both ways: the accepted end keeps the listener's name, the
    client's peer name is the listener's, and the listener still works."""
    addr = '"/mnt/t/srv.sock"' if name == "path" else 'b"\\0zdtm-srv@RUN"'
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold(f"""
import socket
addr = {addr}
lst = socket.socket(socket.AF_UNIX); lst.bind(addr); lst.listen(4)
c = socket.socket(socket.AF_UNIX); c.connect(addr)
a, _ = lst.accept(); a.send(b"hello client"); c.send(b"hi")
if os.fork() == 0:
    os.dup2(c.fileno(), 20)
else:
    os.dup2(lst.fileno(), 20); os.dup2(a.fileno(), 21)
for s in (lst, c, a): s.close()
""")
    before, after = case.roundtrip(setup)
    lines = after.snap.sharing.splitlines()
    assert any(re.fullmatch(r"socketpair P\d:2[01] \| P\d:2[01]", line) for line in lines), lines
    fds = [line for p in after.snap.procs for line in p.fds if line.startswith(("20:", "21:"))]
    assert sum("listening=1" in line for line in fds) == 1, fds
    assert any("listening=0 connected=True inq=2" in line and "srv" in line for line in fds), fds
    assert any("name='' listening=0 connected=True inq=12" in line for line in fds), fds


def test_unix_sockets_beneath_a_cover_read_only_and_in_another_namespace(case):
    """Path-bound sockets whose file no path of their process reaches: beneath an overmount, in a
    directory made a read-only bind afterwards, and on a mount of a nested mount namespace (a
    child of the holder bound it there: systemd-nspawn's /run/host/notify). Each is bound again
    with its name, and its socket file is back in the same directory of the same filesystem."""
    setup = """
mkdir /mnt/t /mnt/ro; mount -t tmpfs t /mnt/t; mount -t tmpfs ro /mnt/ro; mkdir /mnt/t/d /mnt/ro/h
""" + py_hold("""
import socket, subprocess, ctypes
under = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); under.bind("/mnt/t/d/under.sock")
subprocess.run(["mount", "-t", "tmpfs", "cover", "/mnt/t"], check=True)
ro = socket.socket(socket.AF_UNIX); ro.bind("/mnt/ro/h/ro.sock"); ro.listen(3)
subprocess.run("mount --bind /mnt/ro/h /mnt/ro/h && mount -o remount,bind,ro /mnt/ro/h", shell=True, check=True)
nested = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
if os.fork() == 0:
    ctypes.CDLL(None).unshare(0x00020000)
    subprocess.run("mount --make-rprivate / && mount -t tmpfs n /mnt/t && mkdir /mnt/t/run", shell=True, check=True)
    nested.bind("/mnt/t/run/notify"); nested.close(); os.write(w, b"x")
    os.close(r); os.close(w); under.close(); ro.close()
else:
    os.read(r, 1)
    os.dup2(under.fileno(), 10); os.dup2(ro.fileno(), 11); os.dup2(nested.fileno(), 12)
    for x in (under, ro, nested): x.close()
""")
    beneath = "unshare -m --propagation private sh -c 'umount /mnt/t; ls -l /mnt/t/d | sed 1d | cut -c1'"
    nested = ("for p in /proc/[0-9]*; do [ \"$(readlink $p/ns/mnt)\" != \"$(readlink /proc/self/ns/mnt)\" ] && "
              "ls -l $p/root/mnt/t/run | sed 1d | cut -c1; done | sort -u")
    before, after = case.roundtrip(setup, check=f"{beneath}; ls -l /mnt/ro/h | sed 1d | cut -c1; {nested}")
    assert after.snap.check_output.split() == ["s", "s", "s"], after.snap.check_output
    assert "name='/mnt/t/d/under.sock'" in _fd(after, 10)
    assert "name='/mnt/ro/h/ro.sock' listening=1" in _fd(after, 11)
    assert "name='/mnt/t/run/notify'" in _fd(after, 12)


def _queued(pid: int, fd: int) -> list[bytes]:
    """The datagrams queued on fd `fd` of process `pid` (peeked, not consumed)."""
    from engine.fds import unix_queue
    s = _grab_socket(pid, fd)
    import base64
    import types
    with s:
        return [base64.b64decode(m) for m in unix_queue.peek_messages(s, types.SimpleNamespace(where=f"fd {fd}"), 0)]


def test_unix_pairs_with_queued_datagrams(case):
    """Datagram and seqpacket socket pairs with messages queued both ways (their bounds kept, in
    order, and read without consuming them at dump), one end held by a child."""
    setup = py_hold("""
import socket
d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
for m in (b"one", b"two!", b"three"): d1.send(m)
d2.send(b"back")
q1, q2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
q1.send(b"x" * 5000); q1.send(b"y")
if os.fork() == 0:
    os.dup2(d2.fileno(), 20); os.dup2(q2.fileno(), 21)
else:
    os.dup2(d1.fileno(), 20); os.dup2(q1.fileno(), 21)
for s in (d1, d2, q1, q2): s.close()
""")
    before, after = case.roundtrip(setup)
    child = int(subprocess.run(["ps", "-o", "pid=", "--ppid", str(after.pid)], capture_output=True,
                               text=True).stdout.split()[0])
    assert (_queued(child, 20), _queued(child, 21)) == ([b"one", b"two!", b"three"], [b"x" * 5000, b"y"])
    assert (_queued(after.pid, 20), _queued(after.pid, 21)) == ([b"back"], [])


def test_dgram_connected_to_named_sockets(case):
    """Clients of /run/systemd/notify and of an abstract name: datagram sockets (in a child) connected
    to named datagram sockets the parent holds, the path one's file beneath an overmount. After
    restore a datagram sent on each client reaches its server."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket, subprocess
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind("/mnt/t/notify")
ab = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ab.bind(b"\\0zdtm-notify@RUN")
c1 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c1.connect("/mnt/t/notify")
c2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c2.connect(b"\\0zdtm-notify@RUN")
subprocess.run(["mount", "-t", "tmpfs", "over", "/mnt/t"], check=True)
if os.fork() == 0:
    os.dup2(c1.fileno(), 11); os.dup2(c2.fileno(), 12)
else:
    os.dup2(srv.fileno(), 11); os.dup2(ab.fileno(), 12)
for x in (srv, ab, c1, c2): x.close()
""")
    states = case.roundtrip(setup)
    # The snapshot sees both one-way connections (a client to a bound socket in the other process)
    # before and after, whatever the inode order.
    for st in (states[0], states[-1]):
        lines = st.snap.sharing.splitlines()
        for n in (11, 12):
            assert any(re.fullmatch(rf"connected P(\d):{n} -> P(?!\1)\d:{n}", line) for line in lines), lines
    state = states[-1]
    import socket
    kid = _first_child(state.pid)
    grab = _grab_socket

    for n in (11, 12):
        client, server = grab(kid, n), grab(state.pid, n)
        try:
            client.send(b"READY=%d" % n)
            assert server.recv(100, socket.MSG_DONTWAIT) == b"READY=%d" % n
        finally:
            client.close()
            server.close()


def test_listener_with_pending_connections(case):
    """A listening socket with two connections not accepted yet, their clients in a child: after
    restore the listener accepts them in the same order, each connected to the same client fd."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
srv = socket.socket(socket.AF_UNIX); srv.bind("/mnt/t/srv"); srv.listen(8)
c1 = socket.socket(socket.AF_UNIX); c1.connect("/mnt/t/srv")
c2 = socket.socket(socket.AF_UNIX); c2.connect("/mnt/t/srv")
if os.fork() == 0:
    os.dup2(c1.fileno(), 11); os.dup2(c2.fileno(), 12)
else:
    os.dup2(srv.fileno(), 10)
for x in (srv, c1, c2): x.close()
""")
    state = case.roundtrip(setup)[-1]
    import socket
    kid = _first_child(state.pid)
    grab = _grab_socket

    lst = grab(state.pid, 10)
    lst.setblocking(False)
    try:
        for n in (11, 12):
            a, _ = lst.accept()
            client = grab(kid, n)
            try:
                a.send(b"to %d" % n)
                assert client.recv(100, socket.MSG_DONTWAIT) == b"to %d" % n
            finally:
                a.close()
                client.close()
        with pytest.raises(BlockingIOError):
            lst.accept()
    finally:
        lst.close()


def test_too_much_data_on_a_stream_whose_peer_is_gone_refused_unstopped(case):
    """A stream socket pair, one end written to and closed: the data waits on the other end, whose
    peer is gone. Restore sends it again from the peer it makes (test_engine_unix_dangling.py), up to
    what an image keeps (4 MiB): more is refused naming the fd, before the stop."""
    _refused_unstopped(case, py_hold("""
import socket
a, b = socket.socketpair()
a.setsockopt(socket.SOL_SOCKET, 32, 1 << 24)   # SO_SNDBUFFORCE (root): room for more than 4 MiB
a.setblocking(False); sent = 0
while sent < (1 << 22) + 4096:
    sent += a.send(b"x" * 65536)
a.close(); os.dup2(b.fileno(), 10); b.close()
"""), r"process \d+ fd 10 \(socket:\[\d+\]\): \d+ bytes queued: too many")


def test_socket_whose_file_was_removed_on_a_read_only_mount_refused_unstopped(case):
    """A listener whose socket file was removed (a ghost socket) is restored, its file bound again in
    a fresh directory of its mount (test_engine_unix_ghost.py); on a mount made read-only since, with
    no read-write mount of that filesystem, restore could not: refused naming the fd and the name,
    before the stop (unix_ghost.place, asked by prestop and dump)."""
    _refused_unstopped(case, "mkdir /mnt/t; mount -t tmpfs t /mnt/t\n" + py_hold("""
import socket, subprocess
l = socket.socket(socket.AF_UNIX); l.bind("/mnt/t/s"); l.listen(); os.dup2(l.fileno(), 10); l.close()
os.unlink("/mnt/t/s")
subprocess.run(["mount", "-o", "remount,bind,ro", "/mnt/t"], check=True)
"""), r"process \d+ fd 10 \(socket:\[\d+\]\): bound to /mnt/t/s, whose socket file was deleted on a "
       "read-only mount")


# A parent holding one socket and a child (the dumped tree) holding another (it closes what it
# inherited): the child notes each SIGCONT (as STOP_WATCH does) in /run/.continued.
_OUTSIDE = """
import signal, socket
{parent}
if os.fork() == 0:
    def cont(*_):
        with open("/run/.continued", "a") as f:
            f.write("SIGCONT\\n")
    signal.signal(signal.SIGCONT, cont)
    {child}
"""


def _dump_child(case, parent: str, child: str) -> tuple[int, str]:
    """Start `_OUTSIDE` with these parts; dump the child alone, which must fail: (pid, its stderr)."""
    from enginecase import mntcr
    pid = case.start(py_hold(_OUTSIDE.format(parent=parent, child=child)))
    r = mntcr("dump", "-t", str(_first_child(pid)), "-D", case.new_images_dir(),
              "--external", "mnt[/usr]:usr", "--external", "mnt[/etc]:etc")
    assert r.returncode == 2, r.stderr
    return pid, r.stderr


def test_dgram_connected_to_a_socket_outside_the_tree_refused_unstopped(case):
    """A datagram socket connected to a named socket that a process outside the dumped tree holds
    (a client of a syslog daemon that is not dumped): restore would connect to whatever has that
    name then. Refused naming the fd and the name, before the stop."""
    pid, err = _dump_child(case, 'srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind("/run/srv")',
                           'srv.close(); c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.connect("/run/srv"); '
                           'os.dup2(c.fileno(), 10)')
    assert re.fullmatch(r"mntcr dump: process \d+ fd \d+ \(socket:\[\d+\]\): connected to /run/srv, a socket no "
                        r"process of the tree holds: not supported\n", err), err
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_pending_connection_from_outside_the_tree_refused_unstopped(case):
    """A listener of the dumped tree with a connection not accepted yet whose client a process
    outside the tree holds: restore cannot connect it again. Refused naming the listener, before
    the stop."""
    pid, err = _dump_child(case, 'import time; c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)',
                           'c.close(); l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind("/run/l"); l.listen(); '
                           'os.dup2(l.fileno(), 10); open("/run/listening", "w").close()\n'
                           'else:\n    while not os.path.exists("/run/listening"): time.sleep(0.01)\n'
                           '    c.connect("/run/l")')
    assert re.fullmatch(r"mntcr dump: process \d+ fd \d+ \(socket:\[\d+\]\): listening unix socket with a "
                        r"connection not yet accepted whose client no process of the tree holds: not supported\n",
                        err), err
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_unix_fds_in_flight(case):
    """Files and FIFOs sent with SCM_RIGHTS and not received yet: on a datagram pair (between
    plain messages), and, as systemd-nspawn keeps its kmsg FIFO, an empty seqpacket message on a
    socket whose peer is gone, the FIFO deleted and bound over a file (a mount whose root it is).
    Each comes back in the queue at its place: the receiver gets the same file and offset."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; printf 0123456789 > /mnt/t/f; mkfifo /mnt/t/kmsg; touch /mnt/t/over
mount --bind /mnt/t/kmsg /mnt/t/over; rm /mnt/t/kmsg
""" + py_hold("""
import socket
d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
f = os.open("/mnt/t/f", os.O_RDONLY); os.lseek(f, 3, os.SEEK_SET)
d1.send(b"first"); socket.send_fds(d1, [b"with a file"], [f]); d1.send(b"last"); os.close(f)
k = os.open("/mnt/t/over", os.O_RDWR | os.O_NONBLOCK)
q1, q2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
socket.send_fds(q2, [b""], [k]); q2.close(); os.close(k)
os.dup2(d2.fileno(), 20); os.dup2(q1.fileno(), 21); os.dup2(d1.fileno(), 22)
for x in (d1, d2, q1): x.close()
""")
    before, after = case.roundtrip(setup)
    import socket
    from engine import kernel
    from engine.fds import sys as fsys
    pidfd = kernel.pidfd_open(after.pid)
    try:
        d2 = socket.socket(fileno=fsys.pidfd_getfd(pidfd, 20))
        q1 = socket.socket(fileno=fsys.pidfd_getfd(pidfd, 21))
    finally:
        os.close(pidfd)
    with d2, q1:   # (reading consumes the restored tree's queues: the test's last look)
        assert d2.recv(100) == b"first"
        data, fds, _, _ = socket.recv_fds(d2, 100, 4)
        assert data == b"with a file" and len(fds) == 1
        assert os.read(fds[0], 100) == b"3456789"
        assert d2.recv(100) == b"last"
        data, kfds, _, _ = socket.recv_fds(q1, 100, 4)
        assert data == b"" and len(kfds) == 1
        os.write(kfds[0], b"x")   # the FIFO bound over /mnt/t/over in the restored tree
        out = subprocess.run(["nsenter", "-t", str(after.pid), "-m", "--", "dd", "if=/mnt/t/over", "bs=1",
                              "count=1", "iflag=nonblock", "status=none"], capture_output=True, timeout=30)
        assert out.stdout == b"x", out
        for fd in fds + kfds:
            os.close(fd)


def test_pipes_in_flight(case):
    """Pipe ends sent with SCM_RIGHTS and not received yet (CRIU's scm00, scm03): the read end of a
    pipe holding data on a datagram pair, its sender's copy closed and the write end kept; both ends of
    another pipe in one seqpacket message, no process holding either. Each comes back in the queue as
    an end of the same restored pipe as the process's, the data in it."""
    setup = py_hold("""
import socket
d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe(); os.write(w, b"in the pipe")
socket.send_fds(d1, [b"read end"], [r]); os.close(r); os.dup2(w, 23); os.close(w)
q1, q2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
r2, w2 = os.pipe(); os.write(w2, b"both")
socket.send_fds(q2, [b"both ends"], [r2, w2]); os.close(r2); os.close(w2)
os.dup2(d2.fileno(), 20); os.dup2(q1.fileno(), 21); os.dup2(d1.fileno(), 22); os.dup2(q2.fileno(), 24)
for x in (d1, d2, q1, q2): x.close()
""")
    before, after = case.roundtrip(setup)
    import socket
    from engine import kernel
    from engine.fds import sys as fsys
    pidfd = kernel.pidfd_open(after.pid)
    try:
        d2 = socket.socket(fileno=fsys.pidfd_getfd(pidfd, 20))
        q1 = socket.socket(fileno=fsys.pidfd_getfd(pidfd, 21))
        w = fsys.pidfd_getfd(pidfd, 23)
    finally:
        os.close(pidfd)
    with d2, q1:   # (reading consumes the restored tree's queues: the test's last look)
        data, fds, _, _ = socket.recv_fds(d2, 100, 4, socket.MSG_DONTWAIT)
        assert data == b"read end" and len(fds) == 1
        os.write(w, b", more")
        os.close(w)
        assert os.read(fds[0], 100) == b"in the pipe, more"
        data, ends, _, _ = socket.recv_fds(q1, 100, 4, socket.MSG_DONTWAIT)
        assert data == b"both ends" and len(ends) == 2
        assert os.fstat(ends[0]).st_ino == os.fstat(ends[1]).st_ino
        os.write(ends[1], b" ends")
        assert os.read(ends[0], 100) == b"both ends"
        for fd in fds + ends:
            os.close(fd)


def test_kind_in_flight_not_kept_refused_unstopped(case):
    """An inotify fd sent with SCM_RIGHTS on a datagram pair and not received yet is refused before
    the stop: a peek at the head message shows it. (An epoll, CRIU's scm05, was refused so before
    session 28: tests/test_engine_unix_stream_inflight.py keeps it now.)"""
    _refused_unstopped(case, py_hold("""
import ctypes, socket
d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
ino = ctypes.CDLL(None).inotify_init1(0); socket.send_fds(d1, [b"an inotify"], [ino]); os.close(ino)
os.dup2(d2.fileno(), 20); os.dup2(d1.fileno(), 21); d1.close(); d2.close()
"""), r"process \d+ fd 20 \(socket:\[\d+\]\): an fd in flight \(anon_inode:inotify\): only files, "
      r"FIFOs, pipes, memfds, eventfds, signalfds, timerfds and epolls in flight are supported")


def test_fifo_in_flight_keeps_its_data(case):
    """A FIFO whose only holder is an fd in flight (sent with SCM_RIGHTS and closed by the sender,
    the FIFO's name on a tmpfs of a nested mount namespace): the bytes it buffers come back with
    it (they were lost: the entry in flight named no pipe object)."""
    setup = """
mkdir /mnt/t
""" + py_hold("""
import ctypes, signal, socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
if os.fork() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x00020000) == 0                                   # CLONE_NEWNS
    assert libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None) == 0    # MS_REC | MS_PRIVATE
    assert libc.mount(b"t", b"/mnt/t", b"tmpfs", 0, None) == 0
    os.mkfifo("/mnt/t/fifo")
    q = os.open("/mnt/t/fifo", os.O_RDWR | os.O_NONBLOCK); os.write(q, b"fifo data")
    socket.send_fds(b, [b"fifo"], [q]); os.close(q); a.close(); b.close()
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
os.dup2(a.fileno(), 20); a.close(); b.close()
""")
    before, after = case.roundtrip(setup)
    import socket
    from engine import kernel
    from engine.fds import sys as fsys
    pidfd = kernel.pidfd_open(after.pid)
    try:
        s = socket.socket(fileno=fsys.pidfd_getfd(pidfd, 20))
    finally:
        os.close(pidfd)
    with s:   # (reading consumes the restored tree's queue: the test's last look)
        data, fds, _, _ = socket.recv_fds(s, 100, 4, socket.MSG_DONTWAIT)
        assert data == b"fifo" and len(fds) == 1
        assert os.readlink(f"/proc/self/fd/{fds[0]}") == "/mnt/t/fifo"
        os.set_blocking(fds[0], False)
        assert os.read(fds[0], 100) == b"fifo data"
        os.close(fds[0])


def test_inotify_watch_on_a_symlink(case):
    """A watch on a symlink itself (IN_DONT_FOLLOW, as systemd watches /etc/localtime): restored on
    the symlink, not on its target (fdinfo shows no IN_DONT_FOLLOW bit), also after a second C/R."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; touch /mnt/t/target; ln -s target /mnt/t/link
""" + py_hold("""
import ctypes
libc = ctypes.CDLL(None)
i = libc.inotify_init1(0)
libc.inotify_add_watch(i, b"/mnt/t/link", 0x4 | 0x02000000)
os.dup2(i, 10); os.close(i)
""")
    state = case.roundtrip(setup, iters=2)[-1]   # (the first restore's watch was dumped again)
    with open(f"/proc/{state.pid}/fdinfo/10") as f:
        ino = int(re.search(r"inotify wd:1 ino:([0-9a-f]+)", f.read())[1], 16)
    assert ino == os.lstat(f"/proc/{state.pid}/root/mnt/t/link").st_ino


def test_fanotify_group_and_marks(case):
    """A fanotify group (FAN_CLASS_CONTENT | FAN_UNLIMITED_QUEUE, O_LARGEFILE events, non-blocking)
    with an inode mark (and an ignored mask that survives modify), a mount mark and a filesystem
    mark: each comes back with its flags and masks, on the restored inode, mount and filesystem."""
    setup = """
mkdir /mnt/t /mnt/u; mount -t tmpfs t /mnt/t; mount -t tmpfs u /mnt/u; touch /mnt/t/file
""" + py_hold("""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
f = libc.fanotify_init(0x4 | 0x10 | 0x2, os.O_RDONLY | os.O_LARGEFILE)
assert f >= 0, ctypes.get_errno()
for flags, mask, path in ((0x1 | 0x10, 0x20, b"/mnt/t"), (0x1, 0x2 | 0x8, b"/mnt/t/file"),
                          (0x1 | 0x20 | 0x40, 0x1, b"/mnt/t/file"), (0x1 | 0x100, 0x10, b"/mnt/u")):
    assert libc.fanotify_mark(f, flags, mask, -100, path) == 0, ctypes.get_errno()
os.dup2(f, 10); os.close(f)
""")

    def marks(pid):
        with open(f"/proc/{pid}/fdinfo/10") as f:
            text = f.read()
        out = []
        for line in text.splitlines():
            if not line.startswith("fanotify "):
                continue
            fields = dict(x.split(":", 1) for x in line.split()[1:])
            if "mnt_id" in fields:   # the mount, by where it is in the tree
                fields["mnt_id"] = next(l.split()[4] for l in open(f"/proc/{pid}/mountinfo")
                                        if l.split()[0] == str(int(fields["mnt_id"], 16)))
            if "ino" in fields:      # the inode, by its name
                fields["ino"] = "file" if int(fields["ino"], 16) == os.stat(f"/proc/{pid}/root/mnt/t/file").st_ino \
                    else "other"
            for k in ("sdev", "f_handle", "fhandle-bytes", "fhandle-type"):
                fields.pop(k, None)
            out.append(sorted(fields.items()))
        return sorted(out), re.search(r"flags:\s+([0-7]+)", text)[1]

    pid = case.start(setup)
    want = marks(pid)
    assert len(want[0]) == 4 and ("mnt_id", "/mnt/t") in want[0][-1] + want[0][0] + want[0][1] + want[0][2]
    state = case.roundtrip(setup, iters=2)[-1]
    assert marks(state.pid) == want
    # The filesystem mark is on the restored /mnt/u: an open there is reported to the group.
    with open(f"/proc/{state.pid}/fdinfo/10") as f:
        sdev = int(re.search(r"fanotify sdev:([0-9a-f]+) mflags", f.read())[1], 16)
    st = os.stat(f"/proc/{state.pid}/root/mnt/u")
    assert (os.major(st.st_dev), os.minor(st.st_dev)) == (sdev >> 20, sdev & 0xFFFFF)


def test_fanotify_mount_mark_on_a_detached_mount_refused_unstopped(case):
    """A fanotify mount mark on a tmpfs lazily unmounted since (a directory fd keeps the mount, and
    the mark, alive): restore cannot mark a mount no namespace of the tree has. Refused naming the
    fd and the mark, before the stop."""
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t\n" + py_hold("""
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
f = libc.fanotify_init(0x2, os.O_RDONLY)
assert f >= 0 and libc.fanotify_mark(f, 0x1 | 0x10, 0x20, -100, b"/mnt/t") == 0, ctypes.get_errno()
os.dup2(f, 10); os.close(f)
""" + _DETACH_MNT_T)
    _refused_unstopped(case, setup, r"process \d+ fd 10 \(anon_inode:\[fanotify\]\): fanotify mount mark 0 on mount "
                                    r"\d+, which is in no mount namespace of the tree \(a detached mount or one outside "
                                    r"the dump\): not supported")


def test_fanotify_inode_marks_on_overlay_found_by_inode_number(case):
    """Overlayfs without nfs_export shows a handle it cannot open again (ESTALE), for fanotify's
    inode marks as for inotify's watches: marks on an overlay directory and an overlay file are
    found by their inode numbers and come back on the same inodes, also after a second C/R."""
    setup = """
mkdir /mnt/t /mnt/o; mount -t tmpfs t /mnt/t; mkdir -p /mnt/t/l/share/d /mnt/t/u /mnt/t/w; echo x > /mnt/t/l/f
mount -t overlay overlay -o lowerdir=/mnt/t/l,upperdir=/mnt/t/u,workdir=/mnt/t/w /mnt/o
""" + py_hold("""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
f = libc.fanotify_init(0x2, os.O_RDONLY)
assert f >= 0, ctypes.get_errno()
for mask, path in ((0x8, b"/mnt/o/share/d"), (0x2, b"/mnt/o/f")):
    assert libc.fanotify_mark(f, 0x1, mask, -100, path) == 0, ctypes.get_errno()
os.dup2(f, 10); os.close(f)
""")
    from engine import kernel
    pid = case.start(setup)
    with open(f"/proc/{pid}/fdinfo/10") as f:
        assert len(re.findall(r"^fanotify ino:", f.read(), re.M)) == 2
    fd = os.open(f"/proc/{pid}/root/mnt/o", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):   # (what the fallback is for: this overlay's handles do not open)
            htype, handle, _ = kernel.name_to_handle_at(fd, "f")
            os.close(kernel.open_by_handle_at(fd, htype, handle, os.O_PATH))
    finally:
        os.close(fd)
    after = case.roundtrip(setup, iters=2)[-1]   # (the first restore's marks are dumped again)
    with open(f"/proc/{after.pid}/fdinfo/10") as f:
        got = {int(ino, 16): int(mask, 16)
               for ino, mask in re.findall(r"^fanotify ino:([0-9a-f]+) .*? mask:([0-9a-f]+) ", f.read(), re.M)}
    root = f"/proc/{after.pid}/root/mnt/o"
    assert got == {os.stat(f"{root}/share/d").st_ino: 0x8, os.stat(f"{root}/f").st_ino: 0x2}, got


def test_executable_is_the_stand_ins_own(case):
    """A process whose executable is on a tmpfs of the tree (beneath an overmount after it
    started): the stand-in's /proc/PID/exe is that file on that mount, not its interpreter."""
    import platform
    if platform.machine() != "x86_64":
        pytest.skip("a stand-in takes its executable on x86-64 only (engine/mappings.py)")
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; cp -L /.hold/mntcr-hold /mnt/t/mntcr-hold
/mnt/t/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
# (covered once the child runs the file: its exec done, not after a sleep a loaded machine outruns)
c=$!; while [ "$(cat /proc/$c/comm)" != mntcr-hold ]; do sleep 0.05; done
mount -t tmpfs cover /mnt/t
hold
"""
    before, after = case.roundtrip(setup)
    child = [p for p in after.snap.procs if p.pid != after.pid][0]
    assert os.readlink(f"/proc/{child.pid}/exe") == "/mnt/t/mntcr-hold"
    assert any(line.startswith("exe /mnt/t/mntcr-hold mnt=/mnt/t#1") for line in child.maps), child.maps


def _inbox(pid: int, fd: int) -> list[tuple[bytes, object]]:
    """(data, sender's address) of each datagram queued on fd `fd` of `pid`, peeked in order."""
    import socket
    s = _grab_socket(pid, fd)
    with s:
        s.setsockopt(socket.SOL_SOCKET, 42, 0)   # SO_PEEK_OFF
        out = []
        while True:
            try:
                data, _, _, addr = s.recvmsg(1 << 16, 0, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            out.append((data, addr))


def test_datagrams_queued_on_named_sockets(case):
    """A syslog-like socket bound to a path (its file beneath an overmount) and one bound to an
    abstract name, with datagrams waiting from an unbound client that has closed, from a client
    bound to a path and one bound to an abstract name (both held by a child): after restore each
    receiver holds the same datagrams in the same order, each from the same sender address, and a
    reply to a named sender reaches that sender."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket, subprocess
log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); log.bind("/mnt/t/log")
ab = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ab.bind(b"\\0zdtm-inbox@RUN")
anon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); named.bind("/mnt/t/client")
abc = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); abc.bind(b"\\0zdtm-client@RUN")
anon.sendto(b"<13>first", "/mnt/t/log"); named.sendto(b"<13>second", "/mnt/t/log")
abc.sendto(b"<13>third", "/mnt/t/log"); anon.sendto(b"<13>fourth", "/mnt/t/log")
named.sendto(b"a1", b"\\0zdtm-inbox@RUN"); anon.sendto(b"a2", b"\\0zdtm-inbox@RUN"); abc.sendto(b"a3", b"\\0zdtm-inbox@RUN")
anon.close()
subprocess.run(["mount", "-t", "tmpfs", "over", "/mnt/t"], check=True)
if os.fork() == 0:
    os.dup2(named.fileno(), 11); os.dup2(abc.fileno(), 12)
else:
    os.dup2(log.fileno(), 10); os.dup2(ab.fileno(), 11)
for x in (log, ab, named, abc): x.close()
""")
    states = case.roundtrip(setup)
    abc = b"\0zdtm-client" + RUN.encode()
    want10 = [(b"<13>first", None), (b"<13>second", "/mnt/t/client"), (b"<13>third", abc), (b"<13>fourth", None)]
    want11 = [(b"a1", "/mnt/t/client"), (b"a2", None), (b"a3", abc)]
    state = states[-1]
    assert (_inbox(state.pid, 10), _inbox(state.pid, 11)) == (want10, want11)
    # The senders are the child's own sockets again: a reply to the abstract one reaches it.
    import socket
    kid = _first_child(state.pid)
    srv, client = _grab_socket(state.pid, 11), _grab_socket(kid, 12)
    with srv, client:
        srv.sendto(b"reply", abc)
        assert client.recv(100, socket.MSG_DONTWAIT) == b"reply"


def test_datagram_from_a_closed_named_sender_refused(case):
    """A datagram waiting on a named socket, sent from a socket bound to a name and closed since:
    no socket of the tree can send it from that name again, so dump refuses naming the fd and the
    name, and the tree keeps running."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind("/mnt/t/log")
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.bind("/mnt/t/gone")
c.sendto(b"<13>hello", "/mnt/t/log"); c.close()
os.dup2(s.fileno(), 10); s.close()
""")
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"process \d+ fd 10 \(socket:\[\d+\]\): a datagram queued on it was sent from /mnt/t/gone, "
                     r"a name no datagram socket of the tree holds", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in "SR"


def test_datagram_from_a_closed_abstract_sender_kept(case):
    """A datagram waiting on an abstract socket, sent from a socket bound to an abstract name and
    closed since (CRIU's socket_snd_addr; refused before session 26), then one from a live sender:
    after C/R (twice) they wait in order, each from the same sender name (the first sent again
    from a fresh socket bound to the gone name, closed since), and the name is free again."""
    import socket
    setup = py_hold("""
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(b"\\0zdtm-srv@RUN")
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.bind(b"\\0zdtm-gone@RUN")
c.sendto(b"hello", b"\\0zdtm-srv@RUN"); c.close()
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind(b"\\0zdtm-live@RUN")
d.sendto(b"again", b"\\0zdtm-srv@RUN")
os.dup2(s.fileno(), 10); os.dup2(d.fileno(), 11); s.close(); d.close()
""")
    state = case.roundtrip(setup, iters=2)[-1]
    gone, live = (b"\0zdtm-" + w + RUN.encode() for w in (b"gone", b"live"))
    assert _inbox(state.pid, 10) == [(b"hello", gone), (b"again", live)]
    free = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with open(f"/proc/{state.pid}/ns/net") as ns, free:
        import ctypes
        pid = os.fork()
        if pid == 0:   # (in the tree's network namespace: its abstract names)
            try:
                ctypes.CDLL(None, use_errno=True).setns(ns.fileno(), 0x40000000)
                free.bind(gone)
                os._exit(0)
            except BaseException:
                os._exit(1)
        assert os.waitpid(pid, 0)[1] == 0, "the gone sender's name is still bound after restore"


def _socket_file_mount(pid: int, fd: int) -> tuple[str, int]:
    """(path, mount id) of the file of bound socket fd `fd` of `pid` (SIOCUNIXFILE)."""
    import fcntl
    s = _grab_socket(pid, fd)
    with s:
        f = fcntl.ioctl(s.fileno(), 0x89E0)
    try:
        with open(f"/proc/self/fdinfo/{f}") as info:
            mnt = next(int(line.split()[1]) for line in info if line.startswith("mnt_id:"))
        return os.readlink(f"/proc/self/fd/{f}"), mnt
    finally:
        os.close(f)


def test_unix_sockets_on_a_detached_mount(case):
    """Sockets bound on tmpfs mounts that were lazily unmounted since (CRIU's case of a socket
    whose directory went away with `umount -l`): one mount held only by its listening socket, one
    also held by a directory fd with a file on it (a datagram socket). After restore each socket has
    its name, its file lies on a mount in no namespace of the process, the datagram socket takes a
    datagram through that file, and the other file is there."""
    setup = """
mkdir -p /mnt/a /mnt/b; mount -t tmpfs a /mnt/a; mount -t tmpfs b /mnt/b
mkdir /mnt/a/d; echo kept > /mnt/b/keep
""" + py_hold("""
import socket, subprocess
l = socket.socket(socket.AF_UNIX); l.bind("/mnt/a/d/listen.sock"); l.listen(4)
g = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); g.bind("/mnt/b/dgram.sock")
os.dup2(l.fileno(), 10); os.dup2(g.fileno(), 11); l.close(); g.close()
os.dup2(os.open("/mnt/b", os.O_RDONLY | os.O_DIRECTORY), 12)
subprocess.run(["umount", "-l", "/mnt/a"], check=True); subprocess.run(["umount", "-l", "/mnt/b"], check=True)
""")
    state = case.roundtrip(setup)[-1]
    with open(f"/proc/{state.pid}/mountinfo") as f:
        visible = {int(line.split()[0]) for line in f}
    for fd, path in ((10, "/d/listen.sock"), (11, "/dgram.sock")):
        where, mnt = _socket_file_mount(state.pid, fd)
        assert (where, mnt in visible) == (path, False), (fd, where, mnt)
    with open(f"/proc/{state.pid}/fdinfo/12") as f:
        held = next(int(line.split()[1]) for line in f if line.startswith("mnt_id:"))
    assert _socket_file_mount(state.pid, 11)[1] == held   # one detached mount, as at dump
    assert "name='/mnt/a/d/listen.sock' listening=1" in _fd(state, 10)
    assert "name='/mnt/b/dgram.sock'" in _fd(state, 11)
    with open(f"/proc/{state.pid}/fd/12/keep") as f:
        assert f.read() == "kept\n"
    import socket
    import fcntl
    srv = _grab_socket(state.pid, 11)
    with srv:
        f = fcntl.ioctl(srv.fileno(), 0x89E0)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
                c.sendto(b"through the detached file", f"/proc/self/fd/{f}")
            assert srv.recv(100, socket.MSG_DONTWAIT) == b"through the detached file"
        finally:
            os.close(f)


def test_data_on_pending_connections(case):
    """Clients that connected and sent before their listener accepted (an HTTP request and a
    seqpacket message), behind a client that sent nothing: the data waits in the server end the
    kernel made for each connection, which only accept() reaches. Dump takes the connections last
    (the tree is killed after) and reads it; after restore the listener accepts the connections in
    the same order, and each reads what its client had sent."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
srv = socket.socket(socket.AF_UNIX); srv.bind("/mnt/t/srv"); srv.listen(8)
c0 = socket.socket(socket.AF_UNIX); c0.connect("/mnt/t/srv")
c1 = socket.socket(socket.AF_UNIX); c1.connect("/mnt/t/srv"); c1.send(b"GET / HTTP/1.0\\r\\n\\r\\n")
sq = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); sq.bind(b"\\0zdtm-seq@RUN"); sq.listen(4)
c2 = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); c2.connect(b"\\0zdtm-seq@RUN"); c2.send(b"one"); c2.send(b"two")
if os.fork() == 0:
    os.dup2(c0.fileno(), 11); os.dup2(c1.fileno(), 12); os.dup2(c2.fileno(), 13)
else:
    os.dup2(srv.fileno(), 10); os.dup2(sq.fileno(), 14)
for x in (srv, c0, c1, sq, c2): x.close()
""")
    state = case.roundtrip(setup)[-1]
    import socket
    lst, seq = _grab_socket(state.pid, 10), _grab_socket(state.pid, 14)
    with lst, seq:
        lst.setblocking(False)
        seq.setblocking(False)
        got = []
        for listener in (lst, lst, seq):
            a, _ = listener.accept()
            with a:
                a.setblocking(False)
                msgs = []
                while True:
                    try:
                        msgs.append(a.recv(100))
                    except BlockingIOError:
                        break
                got.append(msgs)
        assert got == [[], [b"GET / HTTP/1.0\r\n\r\n"], [b"one", b"two"]]


def test_data_on_a_pending_connection_refused_with_leave_running(case):
    """The same with --leave-running: only accept() reads that data, which would take the
    connection from a tree that keeps running: refused naming the listener, and the tree keeps the
    connection pending with its data."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
srv = socket.socket(socket.AF_UNIX); srv.bind("/mnt/t/srv"); srv.listen(8)
c = socket.socket(socket.AF_UNIX); c.connect("/mnt/t/srv"); c.send(b"GET / HTTP/1.0\\r\\n\\r\\n")
os.dup2(srv.fileno(), 10); os.dup2(c.fileno(), 11); srv.close(); c.close()
""")
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir(), ("--leave-running",))
    assert re.search(r"process \d+ fd 10 \(socket:\[\d+\]\): listening unix socket with a connection not yet "
                     r"accepted on which data already waits: only accept\(\) reads it", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    lst = _grab_socket(pid, 10)
    with lst:
        lst.setblocking(False)
        a, _ = lst.accept()
        with a:
            assert a.recv(100) == b"GET / HTTP/1.0\r\n\r\n"


_CTTY_SETUP = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
mknod /dev/tty c 5 0; chmod 666 /dev/tty
""" + py_hold("""
import fcntl, struct, termios
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]
if os.fork() == 0:
    os.setsid()
    s = os.open(f"/dev/pts/{n}", os.O_RDWR)   # (the session leader acquires its terminal)
    os.dup2(os.open("/dev/tty", os.O_RDWR), 10)
    if LEADER_ONLY == 0 and os.fork() == 0:
        os.dup2(os.open("/dev/tty", os.O_RDWR), 11)   # a member of the session, not its leader
    os.close(s)
else:
    os.dup2(m, 20)
os.close(m)
""")


def test_dev_tty_of_a_session_leader(case):
    """A shell's /dev/tty (a pane's shell in tmux): a child leads a session whose controlling
    terminal is a pty the parent holds the master of, and holds /dev/tty. After restore its
    stand-in has that pty as its controlling terminal, and what is written to its /dev/tty fd
    comes out of the master."""
    state = case.roundtrip(_CTTY_SETUP.replace("LEADER_ONLY", "1"))[-1]
    kid = _first_child(state.pid)
    assert os.readlink(f"/proc/{kid}/fd/10") == "/dev/tty"
    with open(f"/proc/{kid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert (int(fields[3]), os.major(int(fields[4])), os.minor(int(fields[4]))) == (kid, 136, 0), fields
    import fcntl
    from engine.fds import sys as fsys
    pidfd = os.pidfd_open(kid)
    try:
        mine = fsys.pidfd_getfd(pidfd, 10)
    finally:
        os.close(pidfd)
    pidfd = os.pidfd_open(state.pid)
    try:
        master = fsys.pidfd_getfd(pidfd, 20)
    finally:
        os.close(pidfd)
    try:
        os.write(mine, b"through /dev/tty\n")
        fcntl.fcntl(master, fcntl.F_SETFL, os.O_NONBLOCK)
        assert b"through /dev/tty" in os.read(master, 100)
    finally:
        os.close(mine)
        os.close(master)


def test_dev_tty_of_a_session_member(case):
    """/dev/tty held by a process of the session that does not lead it (a job of a shell that opens
    its terminal): it has its leader's terminal. After restore it still has it (its stand-in is
    forked once its leader took the terminal: engine/ctty.py; the snapshot compares each process's
    terminal), and what it writes to its /dev/tty fd comes out of the master."""
    state = case.roundtrip(_CTTY_SETUP.replace("LEADER_ONLY", "0"))[-1]
    kid = _first_child(state.pid)
    member = _first_child(kid)
    assert os.readlink(f"/proc/{member}/fd/11") == "/dev/tty"
    with open(f"/proc/{member}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert (int(fields[3]), os.major(int(fields[4])), os.minor(int(fields[4]))) == (kid, 136, 0), fields
    from engine.fds import sys as fsys
    import fcntl
    pidfd = os.pidfd_open(member)
    try:
        mine = fsys.pidfd_getfd(pidfd, 11)
    finally:
        os.close(pidfd)
    pidfd = os.pidfd_open(state.pid)
    try:
        master = fsys.pidfd_getfd(pidfd, 20)
    finally:
        os.close(pidfd)
    try:
        os.write(mine, b"a member through /dev/tty\n")
        fcntl.fcntl(master, fcntl.F_SETFL, os.O_NONBLOCK)
        assert b"a member through /dev/tty" in os.read(master, 100)
    finally:
        os.close(mine)
        os.close(master)


def test_netlink_sockets(case):
    """What journald and a root dbus-daemon hold: an rtnetlink socket bound to its port id and
    listening to groups (one beyond the first 32), with a netlink flag and a bigger receive
    buffer; an audit socket never bound; a uevent socket bound to an explicit port id and
    connected. After restore each has the same protocol, port id, groups and peer (the snapshot
    compares them), and the rtnetlink socket answers a request. The tree has a network namespace of
    its own, as such a daemon in a container: port ids are a namespace's, and the rtnetlink socket's
    is its process's pid (1 in its pid namespace), which any test running meanwhile in the host's
    network namespace from a pid namespace of its own gets too (restore could not bind it again
    then: EADDRINUSE)."""
    setup = py_hold("""
import socket
r = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE); r.bind((0, 1))
r.setsockopt(270, 1, 33); r.setsockopt(270, 11, 1)   # a group above 32 (RTNLGRP_BRVLAN); NETLINK_EXT_ACK
r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
a = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9)   # NETLINK_AUDIT
u = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15); u.bind((4242, 0)); u.connect((0, 0))
os.dup2(r.fileno(), 10); os.dup2(a.fileno(), 11); os.dup2(u.fileno(), 12)
for x in (r, a, u): x.close()
""").replace("exec python3", "exec unshare --net python3", 1)
    before, after = case.roundtrip(setup)
    assert "protocol=0 name=" in _fd(before, 10) and "groups=[1, 33]" in _fd(before, 10), _fd(before, 10)
    assert "name=(4242, 0)" in _fd(after, 12), _fd(after, 12)
    import socket
    import struct
    s = _grab_socket(after.pid, 10)
    with s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20
        assert s.getsockopt(270, 11) == 1
        # RTM_GETLINK of the loopback (ifindex 1): the reply comes to the restored port id.
        s.send(struct.pack("=IHHII", 32, 18, 1 | 4, 7, 0) + struct.pack("=BBHiII", 0, 0, 0, 1, 0, 0))
        s.settimeout(10)
        while True:
            reply = s.recv(65536)
            if struct.unpack_from("=I", reply, 8)[0] == 7:
                break
        assert struct.unpack_from("=H", reply, 4)[0] == 16   # RTM_NEWLINK


def test_netlink_messages_waiting_refused_tree_kept(case):
    """An rtnetlink request whose replies the process has not read: the kernel's replies cannot be
    sent again, so dump refuses naming the fd, and the tree keeps running."""
    setup = py_hold("""
import socket, struct, time
r = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE); r.bind((0, 0))
r.send(struct.pack("=IHHII", 32, 18, 1 | 4, 1, 0) + struct.pack("=BBHiII", 0, 0, 0, 1, 0, 0))
r.recv(1, socket.MSG_PEEK)
os.dup2(r.fileno(), 10); r.close()
""")
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"process \d+ fd 10 \(socket:\[\d+\]\): netlink messages wait to be read", str(err.value)), \
        err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in "SR"


def test_fds_in_flight_to_a_named_socket(case):
    """A datagram carrying an fd (SCM_RIGHTS) sent by an unbound client to a socket bound to a path,
    and one to an abstract name: after restore each receiver gets its datagram with an fd on the
    same file, at the same offset: the same open file description both (sent twice), whose offset
    the first read moves for the second (tests/test_engine_inflight_shared.py)."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo "in flight" > /mnt/t/file
""" + py_hold("""
import socket
p = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); p.bind("/mnt/t/recv")
a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); a.bind(b"\\0zdtm-recv@RUN")
f = os.open("/mnt/t/file", os.O_RDONLY); os.lseek(f, 3, 0)
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
r = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, f.to_bytes(4, "little"))]
c.sendmsg([b"with fd"], r, 0, "/mnt/t/recv"); c.sendmsg([b"abstract"], r, 0, b"\\0zdtm-recv@RUN")
c.close(); os.close(f)
os.dup2(p.fileno(), 10); os.dup2(a.fileno(), 11); p.close(); a.close()
""")
    state = case.roundtrip(setup)[-1]
    import socket
    from engine.fds import sys as fsys
    got = []
    try:
        for n, want in ((10, b"with fd"), (11, b"abstract")):
            with _grab_socket(state.pid, n) as s:
                data, fds, _, _ = socket.recv_fds(s, 100, 4, socket.MSG_DONTWAIT)
                got += fds
                assert (data, len(fds)) == (want, 1)
        assert fsys.same_file(os.getpid(), got[0], os.getpid(), got[1])
        assert os.read(got[1], 100) == b"flight\n" and os.read(got[0], 100) == b""
    finally:
        for x in got:
            os.close(x)



def test_socket_bound_to_a_non_normalised_name_refused(case):
    """A socket bound to a name with '.' (from its cwd): the image keeps normalised names only
    (plain relative ones are restored: tests/test_engine_unix_relative.py), so dump refuses naming
    the fd and the name (it once wrote an image restore refused), and the tree keeps running."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; cd /mnt/t
""" + py_hold("""
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind("./rel.sock"); os.dup2(s.fileno(), 10); s.close()
""")
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"process \d+ fd 10 \(socket:\[\d+\]\): bound to './rel.sock', not a normalised name",
                     str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in "SR"


def _unix_state(pid: int, fd: int) -> str:
    """The St column of /proc/net/unix for socket fd `fd` of `pid` (in its network namespace)."""
    ino = os.stat(f"/proc/{pid}/fd/{fd}").st_ino
    with open(f"/proc/{pid}/net/unix") as f:
        return next(line.split()[5] for line in f if line.split()[6] == str(ino))


def test_named_dgram_socket_once_connected_to(case):
    """Datagram sockets bound to a path and to an abstract name that a client connected to and left
    (logger on /dev/log): the kernel marks them established for good (/proc/net/unix St 03), one
    never connected to stays 01; restore makes the same marks."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
p = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); p.bind("/mnt/t/log")
a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); a.bind(b"\\0zdtm-reached@RUN")
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); n.bind("/mnt/t/never")
for name in ("/mnt/t/log", b"\\0zdtm-reached@RUN"):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
        c.connect(name)
os.dup2(p.fileno(), 10); os.dup2(a.fileno(), 11); os.dup2(n.fileno(), 12)
for x in (p, a, n): x.close()
""")
    state = case.roundtrip(setup)[-1]
    assert [_unix_state(state.pid, n) for n in (10, 11, 12)] == ["03", "03", "01"]


def test_fanotify_events_waiting_refused_unstopped(case):
    """A fanotify group with an event waiting to be read (a write to a marked file): restore cannot
    make the event again, so dump refuses naming the fd, before it stops the tree (FIONREAD tells
    it and reads nothing: the event is still there afterwards)."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; touch /mnt/t/file
""" + py_hold("""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
f = libc.fanotify_init(0x2, os.O_RDONLY | os.O_LARGEFILE)
assert f >= 0 and libc.fanotify_mark(f, 0x1, 0x8, -100, b"/mnt/t/file") == 0, ctypes.get_errno()
with open("/mnt/t/file", "w") as w:
    w.write("x")
os.dup2(f, 10); os.close(f)
""")
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"process \d+ fd 10 \(anon_inode:\[fanotify\]\): fanotify events wait to be read on it",
                     str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    import fcntl
    import struct
    import termios
    from engine.fds import sys as fsys
    pidfd = os.pidfd_open(pid)
    try:
        g = fsys.pidfd_getfd(pidfd, 10)
    finally:
        os.close(pidfd)
    try:
        assert struct.unpack("i", fcntl.ioctl(g, termios.FIONREAD, b"\0\0\0\0"))[0] > 0
    finally:
        os.close(g)


def test_memfd_too_big_refused_unstopped(case):
    """A memfd bigger than the image keeps inline (sparse: ftruncate allocates nothing) is refused
    naming the fd and its size, before the tree is stopped."""
    pid = case.start(STOP_WATCH + py_hold("""
m = os.memfd_create("big"); os.ftruncate(m, (64 << 20) + 1); os.dup2(m, 10); os.close(m)
"""))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"process \d+ fd 10 \(/memfd:big \(deleted\)\): memfd of 67108865 bytes: more than 64 MiB is "
                     "not dumped", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_fds_on_namespaces_of_the_tree(case):
    """A parent holding fds on its child's network and UTS namespaces (systemd-nspawn
    --private-network keeps one on the container's), on its own IPC namespace and on another
    child's user namespace (LXC's monitor keeps one on an unprivileged container's): each is
    reopened on the restored namespace of the same process (the snapshot names it by that process)."""
    setup = """
cat > /run/child.py <<'PY'
import ctypes, signal
ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
signal.pause()
PY
unshare -n -u sh -c 'hostname inner; exec python3 /run/child.py' </dev/null >/dev/null 2>&1 &
child=$!
while [ "$(cat /proc/$child/comm)" != mntcr-hold ]; do sleep 0.05; done
exec 7</proc/$child/ns/net 8</proc/$child/ns/uts 9</proc/self/ns/ipc
unshare -U -r sh -c 'exec python3 /run/child.py' </dev/null >/dev/null 2>&1 &
inner=$!
while [ "$(cat /proc/$inner/comm)" != mntcr-hold ]; do sleep 0.05; done
exec 6</proc/$inner/ns/user
""" + py_hold("")
    before, after = case.roundtrip(setup)
    holder = next(p for p in after.snap.procs if any(line.startswith("7: net:") for line in p.fds))
    child = next(p for p in after.snap.procs if p is not holder and p.ns["net"] != holder.ns["net"])
    inner = next(p for p in after.snap.procs if p.ns["user"] != holder.ns["user"])
    assert any(line.startswith(f"6: user:[P{after.snap.procs.index(inner)}]") for line in holder.fds), holder.fds
    kid = f"P{after.snap.procs.index(child)}"
    assert any(line.startswith(f"7: net:[{kid}]") for line in holder.fds), holder.fds
    assert any(line.startswith(f"8: uts:[{kid}]") for line in holder.fds), holder.fds
    assert any(line.startswith("9: ipc:[P") for line in holder.fds), holder.fds
    assert os.stat(f"/proc/{holder.pid}/fd/9").st_ino == os.stat(f"/proc/{holder.pid}/ns/ipc").st_ino
    # the restored fd is on the child's restored namespace, not a copy
    fd7 = os.stat(f"/proc/{holder.pid}/fd/7").st_ino
    assert fd7 == os.stat(f"/proc/{child.pid}/ns/net").st_ino
    assert fd7 != os.stat(f"/proc/{holder.pid}/ns/net").st_ino


def test_fd_on_a_namespace_outside_the_tree_refused_unstopped(case):
    """An fd on a network namespace no process of the tree is in (only the fd keeps it) is refused
    before the stop, naming the fd."""
    setup = """
unshare -n sleep 100000 </dev/null >/dev/null 2>&1 &
c=$!
while [ "$(readlink /proc/$c/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.05; done
exec 7</proc/$c/ns/net
kill $c; wait $c 2>/dev/null || true
"""
    _refused_unstopped(case, setup + py_hold(""),
                       r"process \d+ fd 7 \(net:\[\d+\]\): its net namespace is none of the dumped tree's")


def test_pidfd_of_a_process_of_the_tree(case):
    """A parent holding a pidfd of its child (LXC's monitor keeps one on the container's init), one
    with PIDFD_NONBLOCK, and one of itself: each names the same process's stand-in after restore."""
    setup = """
cat > /run/child.py <<'PY'
import ctypes, signal
ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
signal.pause()
PY
python3 /run/child.py </dev/null >/dev/null 2>&1 &
echo $! > /run/child.pid
""" + py_hold("""
child = int(open("/run/child.pid").read())
os.dup2(os.pidfd_open(child), 7)
os.dup2(os.pidfd_open(child, os.O_NONBLOCK), 8)
os.dup2(os.pidfd_open(os.getpid()), 9)
""")
    before, after = case.roundtrip(setup)
    holder = next(p for p in after.snap.procs if any(line.startswith("7: ") for line in p.fds))
    child = next(p for p in after.snap.procs if p is not holder)
    kid, me = f"P{after.snap.procs.index(child)}", f"P{after.snap.procs.index(holder)}"
    lines = {line.split(":")[0]: line for line in holder.fds}
    assert lines["7"].endswith(f"pidfd={kid}") and lines["8"].endswith(f"pidfd={kid}"), holder.fds
    assert lines["9"].endswith(f"pidfd={me}"), holder.fds
    assert "flags=4002" in lines["8"], lines["8"]   # O_NONBLOCK kept (dup2 cleared O_CLOEXEC)


def test_pidfds_of_processes_that_exited(case):
    """Pidfds of two children that exited and were reaped (CRIU's pidfd_dead), two on the first: each
    comes back naming no process (fdinfo Pid: -1), the two on one child sharing an inode, the other's
    a different one."""
    setup = py_hold("""
import signal
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        signal.pause(); os._exit(0)
    kids.append(pid)
os.dup2(os.pidfd_open(kids[0]), 7); os.dup2(os.pidfd_open(kids[0], os.O_NONBLOCK), 8)
os.dup2(os.pidfd_open(kids[1]), 9)
for pid in kids:
    os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
""")
    before, after = case.roundtrip(setup)
    lines = {line.split(":")[0]: line for line in after.root.fds}
    for n in ("7", "8", "9"):
        assert lines[n].endswith("pidfd=outside"), after.root.fds
        with open(f"/proc/{after.pid}/fdinfo/{n}") as f:
            assert "Pid:\t-1\n" in f.read()
    assert "flags=4002" in lines["8"], lines["8"]
    ino = {n: os.stat(f"/proc/{after.pid}/fd/{n}").st_ino for n in ("7", "8", "9")}
    assert ino["7"] == ino["8"] != ino["9"], ino


@pytest.mark.parametrize("extra, pattern", [
    ({"cred_groups": [1]}, "'cred_groups' or 'cred_gone' without 'cred'"),
    ({"cred_gone": True}, "'cred_groups' or 'cred_gone' without 'cred'"),
])
def test_listener_groups_fields_need_the_ids(extra, pattern):
    """The validator: the groups a listener listened with, or that it listened in a process gone
    since, come only with the ids it listened with."""
    from engine.fds import unix_check
    from engine.image import ImageError
    with pytest.raises(ImageError, match=pattern):
        unix_check.check({"type": "stream", "listen": 5, **extra}, "fd 3")
    unix_check.check({"type": "stream", "listen": 5, "cred": [0, 0], **extra}, "fd 3")


def test_listener_groups_rule():
    """At most NGROUPS_MAX gids, each an id."""
    from engine.fds import unix_check
    assert unix_check.groups_rule([0, 5, 2**32 - 2]) is None
    assert unix_check.groups_rule([-1]) and unix_check.groups_rule([True]) and unix_check.groups_rule([0] * 65537)


_LISTENS_IN_CHILD = """
import signal, socket
ls = socket.socket(socket.AF_UNIX); ls.bind("/run/l.sock")
kid = os.fork()
if kid == 0:
    ls.listen()
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    import ctypes; ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True: signal.pause()
import time
while not ls.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN): time.sleep(0.01)
os.dup2(ls.fileno(), 20); ls.close()
"""


def test_listener_that_a_later_holder_listened_on(case):
    """The root holds a socket its child (holding it too, a live process of the tree) listened on:
    restore makes it in the first holder's stand-in (the root's) and listens in the child's, so
    its clients see the child as the server (SO_PEERCRED), as they did. (It was refused: the
    root's stand-in listened, and clients saw the root.)"""
    before, after = case.roundtrip(py_hold(_LISTENS_IN_CHILD))
    lines = [line for p in after.snap.procs for line in p.fds if "name='/run/l.sock'" in line]
    assert len(lines) == 2 and all("peercred=pid:P1 " in line for line in lines), lines


def test_listened_by_needs_a_live_listener():
    """The validator: 'listened_by' (the process restore listens in) only with the ids it listened
    with, not with 'cred_gone', and a pid."""
    from engine.fds import unix_check
    from engine.image import ImageError
    good = {"type": "stream", "listen": 5, "cred": [0, 0]}
    unix_check.check({**good, "listened_by": 7}, "fd 3")
    for bad in ({"listened_by": 7, "cred_gone": True}, {"listened_by": "7"}, {"listened_by": 0}):
        with pytest.raises(ImageError, match="listened_by"):
            unix_check.check({**good, **bad}, "fd 3")
    with pytest.raises(ImageError, match="listened_by"):
        unix_check.check({"type": "stream", "listen": 5, "listened_by": 7}, "fd 3")


def test_listener_held_only_by_the_child_that_listened(case):
    """Once the root closed its copy, the child that listened is the socket's only holder: its clients
    see it as the server again after restore."""
    before, after = case.roundtrip(py_hold(_LISTENS_IN_CHILD + "os.close(20)\n"))
    lines = [line for p in after.snap.procs for line in p.fds if "name='/run/l.sock'" in line]
    assert len(lines) == 1 and "peercred=pid:P1 " in lines[0], lines


def test_unix_shutdown_directions_kept(case):
    """Unix sockets shut down in one direction or both: a stream pair (SHUT_WR on one end: the peer
    reads EOF), a seqpacket pair (SHUT_RD), a connection through a listener (the accepted end
    SHUT_RDWR after queueing data), a lone datagram socket (SHUT_WR), a client shut for reading before
    it connected (CRIU's sockets03: its accepted end is not shut for writing; restore shut the
    client after connecting, which gave the accepted end "wr"). The snapshot's "shutdown" lines
    (sock_diag's sk_shutdown of each) are the same after restore."""
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM); s1.send(b"bye"); s1.shutdown(socket.SHUT_WR)
q1, q2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET); q1.shutdown(socket.SHUT_RD)
lst = socket.socket(socket.AF_UNIX); lst.bind("/mnt/t/srv.sock"); lst.listen(4)
c = socket.socket(socket.AF_UNIX); c.connect("/mnt/t/srv.sock")
a, _ = lst.accept(); a.send(b"last words"); a.shutdown(socket.SHUT_RDWR)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.shutdown(socket.SHUT_WR)
e = socket.socket(socket.AF_UNIX); e.shutdown(socket.SHUT_RD); e.connect("/mnt/t/srv.sock"); f, _ = lst.accept()
for n, s in enumerate((s1, s2, q1, q2, lst, c, a, d, e, f)):
    os.dup2(s.fileno(), 20 + n); s.close()
""")
    before, after = case.roundtrip(setup)
    shut = sorted(line for line in after.snap.sharing.splitlines() if line.startswith("shutdown "))
    assert shut == sorted(["shutdown P0:20 wr", "shutdown P0:21 rd", "shutdown P0:22 rd", "shutdown P0:23 wr",
                           "shutdown P0:25 rdwr", "shutdown P0:26 rdwr", "shutdown P0:27 wr",
                           "shutdown P0:28 rd"]), shut


def test_inotify_unread_events_refused_unstopped(case):
    """inotify events queued and not read (restore cannot make them happen again on the restored
    instance in their order: other watchers of the same files would see them too): refused naming
    the fd and the bytes waiting, before the stop."""
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t; touch /mnt/t/f\n" + py_hold("""
import ctypes
libc = ctypes.CDLL(None)
i = libc.inotify_init1(os.O_NONBLOCK)
assert libc.inotify_add_watch(i, b"/mnt/t/f", 0x4) == 1   # IN_ATTRIB
os.chmod("/mnt/t/f", 0o600)
os.dup2(i, 10); os.close(i)
""")
    _refused_unstopped(case, setup, r"process \d+ fd 10 \(anon_inode:inotify\): inotify events wait to be read "
                                    r"on it \(16 bytes; restore cannot make them again\): not supported; dump again once "
                                    r"the program has read them")


def test_inotify_dump_and_restore_queue_no_events(case):
    """CRIU's inotify04 and inotify_system_nodel: every event of watches on tmpfs files and
    directories (IN_ALL_EVENTS, two instances on one file, one directory watch) while the dump
    archives the tmpfs, which opens, reads and closes them, and while the restore fills and opens
    them: the tree dumped with --leave-running has no event to read after it, nor the restored one
    (the snapshot's queued= bytes)."""
    setup = "mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d; echo data > /mnt/t/d/f\n" + py_hold("""
import ctypes
libc = ctypes.CDLL(None)
os.dup2(os.open("/mnt/t/d/f", os.O_RDONLY), 13)   # (a file fd restore opens again: after the watches?)
for n, path in ((10, b"/mnt/t/d/f"), (11, b"/mnt/t/d/f"), (12, b"/mnt/t/d")):
    i = libc.inotify_init1(os.O_NONBLOCK)
    assert libc.inotify_add_watch(i, path, 0xfff) == 1   # IN_ALL_EVENTS
    os.dup2(i, n); os.close(i)
""")
    from zdtm import snapshot

    def snap(pid):   # (the runner's snapshot: enginecase.take also reads fd 13's file, making events)
        return snapshot.take(pid, timeout=30, ignore_maps_on=("/usr", "/etc"))

    def same(a, b):
        equal, report = snapshot.compare(a, b)
        assert equal, report

    pid = case.start(setup)
    before = snap(pid)
    assert [line for line in before.procs[0].fds if line.startswith(("10:", "11:", "12:"))] == [
        f"{n}: anon_inode:inotify flags=4000 pos=0 mnt=detached watches=1:fff queued=0" for n in (10, 11, 12)]
    case.dump(pid, case.new_images_dir(), ("--leave-running",))
    same(before, snap(pid))
    same(before, snap(case.cr(pid)))
