"""Every fd a real process holds: a matrix of kinds x states, each held by a small real program,
dumped and restored, then compared (the snapshot) and USED: what the restored fd does is what the
dumped one would have done (the data written into a restored pipe comes out its other end, a
restored listener accepts, a timerfd fires, an inotify watch reports, an epoll reports readiness of
its restored set, a lock is still held by the restored process).

The test works on the restored fds from outside, on copies of them (pidfd_getfd: the same open
file descriptions), so the tree itself runs nothing after its restore.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import socket
import struct
import threading
import time

import pytest

from enginecase import (HOLD_COMM, STOP_WATCH, CRError, _comm, assert_same, case, grab_fd, py_hold, take,  # noqa: F401
                        wait_until, was_stopped)


class _Got:
    """The test's own copies of the restored tree's fds (pidfd_getfd) and what it made with them,
    all closed at teardown, before the case's (a copy would keep a socket's or a file's mount alive)."""

    def __init__(self):
        self.kept: list = []

    def keep(self, x):
        """`x` (an fd number or an object with close()), closed at teardown; returned."""
        self.kept.append(x)
        return x

    def fd(self, pid: int, n: int) -> int:
        """Our copy of fd `n` of process `pid`."""
        return self.keep(grab_fd(pid, n))

    def sock(self, pid: int, n: int) -> socket.socket:
        """A socket object on our copy of fd `n` of process `pid`."""
        return self.keep(socket.socket(fileno=grab_fd(pid, n)))

    def close(self) -> None:
        for x in reversed(self.kept):
            os.close(x) if isinstance(x, int) else x.close()


@pytest.fixture
def got(case):
    """A _Got, emptied before `case` kills its trees."""
    g = _Got()
    try:
        yield g
    finally:
        g.close()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _fd(state, n: int) -> str:
    return next(line for line in state.root.fds if line.startswith(f"{n}: "))


def _read_all(fd: int, size: int, timeout: float = 30) -> bytes:
    """`size` bytes from fd `fd` (blocking reads, at most `timeout` seconds in all)."""
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < size:
        assert select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0], \
            f"read {len(out)} of {size} bytes, then nothing"
        chunk = os.read(fd, size - len(out))
        assert chunk, f"end of file after {len(out)} of {size} bytes"
        out += chunk
    return out


def _readable(fd: int, timeout: float = 30) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


# --- pipes ----------------------------------------------------------------------------------------

def test_pipes_both_directions_and_a_full_big_pipe(case, got):
    """A parent and child talk over two pipes, each with data waiting; a pipe grown to 1 MiB
    (F_SETPIPE_SZ) and filled: after restore every byte comes out in order, the full pipe takes
    no more until read, and a byte written into each restored pipe comes out its other end."""
    setup = py_hold("""
import fcntl
to_child_r, to_child_w = os.pipe(); to_parent_r, to_parent_w = os.pipe()
big_r, big_w = os.pipe()
fcntl.fcntl(big_w, 1031, 1 << 20)   # F_SETPIPE_SZ
fcntl.fcntl(big_w, fcntl.F_SETFL, os.O_NONBLOCK)
n = 0
try:
    while True: n += os.write(big_w, bytes([n % 251]) * 4096)
except BlockingIOError:
    pass
assert n == 1 << 20, n
if os.fork() == 0:
    os.write(to_parent_w, b"from child")
    os.dup2(to_child_r, 20); os.dup2(to_parent_w, 21)
else:
    os.write(to_child_w, b"from parent")
    os.dup2(to_child_w, 20); os.dup2(to_parent_r, 21); os.dup2(big_r, 22); os.dup2(big_w, 23)
for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w, big_r, big_w): os.close(fd)
""")
    before, after = case.roundtrip(setup)
    parent = after.pid
    child = _children(parent)[0]
    assert "bytes=1048576" in _fd(after, 22), _fd(after, 22)
    assert _read_all(got.fd(child, 20), 11) == b"from parent"
    assert _read_all(got.fd(parent, 21), 10) == b"from child"
    w = got.fd(parent, 23)
    assert fcntl.fcntl(w, 1032) == 1 << 20   # F_GETPIPE_SZ: the capacity came back
    with pytest.raises(BlockingIOError):
        os.write(w, b"x")   # full, as it was
    big = _read_all(got.fd(parent, 22), 1 << 20)
    assert big == b"".join(bytes([(i * 4096) % 251]) * 4096 for i in range(256))
    for wr, rd in ((got.fd(parent, 20), got.fd(child, 20)), (got.fd(child, 21), got.fd(parent, 21)), (w, got.fd(parent, 22))):
        os.write(wr, b"new")
        assert _read_all(rd, 3) == b"new"


def test_shell_pipeline_sleep_into_cat(case, got):
    """`sleep | cat` in a shell: the pipe between two real programs comes back; writing into the
    restored pipe's write end (sleep's stdout) reaches cat, which copies it to its file."""
    setup = """
mkdir -p /run/out
/.hold/mntcr-hold 100000 2>/dev/null | cat >/run/out/cat.txt 2>/dev/null &
wait_for /run/out/cat.txt
hold
"""
    pid = case.start(setup, daemons=("cat",))
    before = take(pid)
    pid = case.cr(pid)
    assert_same(before, take(pid))
    # (a restored tree is stand-ins: cat does not run again; its stdin is the restored pipe)
    kids = {_comm(p): p for p in _children(pid)}
    os.write(got.fd(kids[HOLD_COMM], 1), b"through the pipe\n")
    assert _read_all(got.fd(kids["cat"], 0), 17) == b"through the pipe\n"


def test_fd_flags_and_numbers_above_1024(case, got):
    """O_APPEND, O_NONBLOCK, O_CLOEXEC, O_DIRECT, O_NOATIME on fds numbered above 1024 (the
    holder raised its RLIMIT_NOFILE), and a deleted file: numbers and flags come back, an O_APPEND
    fd still appends after a seek, the deleted file reads its data from its offset."""
    setup = "echo start > /run/log\n" + py_hold("""
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
a = os.open("/run/log", os.O_WRONLY | os.O_APPEND); os.dup2(a, 1500); os.close(a)
r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC); os.dup2(r, 4000, inheritable=False); os.dup2(w, 4001); os.close(r); os.close(w)
d = os.open("/run/log", os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC); os.dup2(d, 1025, inheritable=False); os.close(d)
x = os.open("/run/log", os.O_RDONLY | os.O_DIRECT); os.dup2(x, 2000); os.close(x)
g = os.open("/run/gone", os.O_RDWR | os.O_CREAT); os.write(g, b"deleted but open"); os.lseek(g, 8, 0)
os.unlink("/run/gone"); os.dup2(g, 3000); os.close(g)
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    for n in (1500, 4000, 4001, 1025, 2000, 3000):
        assert os.path.exists(f"/proc/{pid}/fd/{n}")
    with open(f"/proc/{pid}/fdinfo/2000") as f:
        assert int(re.search(r"flags:\s+(\d+)", f.read())[1], 8) & os.O_DIRECT
    assert os.read(got.fd(pid, 3000), 100) == b"but open"   # (its data from its offset, 8)
    assert os.readlink(f"/proc/{pid}/fd/3000") == "/run/gone (deleted)"
    with open(f"/proc/{pid}/fdinfo/4000") as f:
        assert re.search(r"flags:\s+0*2004000\n", f.read())   # O_CLOEXEC|O_NONBLOCK
    a = got.fd(pid, 1500)
    os.lseek(a, 0, os.SEEK_SET)
    os.write(a, b"appended\n")
    with open(f"/proc/{pid}/root/run/log", "rb") as f:
        assert f.read() == b"start\nappended\n"


def test_offset_shared_across_processes(case, got):
    """A file opened once before fork: parent and child share one offset; after restore a read
    through the child's fd moves the parent's offset too."""
    setup = "printf 0123456789 > /run/f\n" + py_hold("""
f = os.open("/run/f", os.O_RDONLY); os.read(f, 3); os.dup2(f, 30); os.close(f)
if os.fork() == 0:
    pass
""")
    before, after = case.roundtrip(setup)
    parent = after.pid
    child = _children(parent)[0]
    assert os.read(got.fd(child, 30), 2) == b"34"
    assert os.read(got.fd(parent, 30), 2) == b"56"


def test_fifo_opened_read_write_by_its_reader_alone(case, got):
    """A FIFO held only by one O_RDWR fd (a daemon's control FIFO), with data in it: after restore
    it reads the data, and a writer opening the FIFO by its name reaches the restored reader."""
    setup = "mkfifo /run/ctl\n" + py_hold("""
f = os.open("/run/ctl", os.O_RDWR); os.write(f, b"queued"); os.dup2(f, 40); os.close(f)
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    rd = got.fd(pid, 40)
    assert _read_all(rd, 6) == b"queued"
    w = got.keep(os.open(f"/proc/{pid}/root/run/ctl", os.O_WRONLY | os.O_NONBLOCK))
    os.write(w, b"hello")
    assert _read_all(rd, 5) == b"hello"


# --- unix sockets ---------------------------------------------------------------------------------

def test_unix_pairs_of_every_type_with_data_queued_both_ways(case, got):
    """Stream, datagram and seqpacket pairs with messages queued both ways: after restore each end
    reads what was queued to it (boundaries kept where the type has them), then new messages flow."""
    setup = py_hold("""
import socket
n = 50
for t in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
    a, b = socket.socketpair(socket.AF_UNIX, t)
    a.send(b"a1"); a.send(b"a22"); b.send(b"b333")
    os.dup2(a.fileno(), n); os.dup2(b.fileno(), n + 1); a.close(); b.close(); n += 2
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    for n, t in ((50, socket.SOCK_STREAM), (52, socket.SOCK_DGRAM), (54, socket.SOCK_SEQPACKET)):
        a = got.sock(pid, n)
        b = got.sock(pid, n + 1)
        assert a.type == t
        if t == socket.SOCK_STREAM:
            assert _read_all(b.fileno(), 5) == b"a1a22"
        else:
            assert b.recv(100) == b"a1" and b.recv(100) == b"a22"
        assert a.recv(100) == b"b333"
        b.send(b"again")
        assert a.recv(100) == b"again"


def test_unix_pair_shut_down_one_way_with_options(case, got):
    """A stream pair whose one end shut down writing after sending (a client that sent its request)
    and whose other end passes credentials (SO_PASSCRED): after restore the request then end of
    file come out, the other direction still carries data, and the option is set."""
    setup = py_hold("""
import socket
a, b = socket.socketpair()
a.send(b"request"); a.shutdown(socket.SHUT_WR)
b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
os.dup2(a.fileno(), 160); os.dup2(b.fileno(), 161); a.close(); b.close()
""")
    before, after = case.roundtrip(setup)
    a, b = got.sock(after.pid, 160), got.sock(after.pid, 161)
    assert _read_all(b.fileno(), 7) == b"request"
    assert _readable(b.fileno(), 30), "no end of file after the request: the shutdown was not kept"
    assert b.recv(10) == b""   # end of file: a shut down writing
    b.send(b"reply")
    assert _read_all(a.fileno(), 5) == b"reply"
    assert b.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
    with pytest.raises(BrokenPipeError):
        a.send(b"more", socket.MSG_NOSIGNAL)


def test_abstract_and_pathname_listeners_with_queued_connections(case, got):
    """A stream listener on an abstract name and a seqpacket one on a path, each with a connection
    its client (a child, holding it at two fds) made and that was never accepted: after restore
    both accept the queued connection with the data the client sent, and a new client connects to
    each."""
    name = f"everyfd-{os.getpid()}-{time.monotonic_ns()}"   # (the tree shares the test's network namespace)
    setup = py_hold("""
import socket
ab = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); ab.bind("\\0everyfd-abstract"); ab.listen(4)
pa = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); pa.bind("/run/seq.sock"); pa.listen(4)
os.dup2(ab.fileno(), 60); os.dup2(pa.fileno(), 61)
if os.fork() == 0:
    os.close(60); os.close(61); ab.close(); pa.close()
    c1 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c1.connect("\\0everyfd-abstract"); c1.send(b"hi abstract")
    c2 = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); c2.connect("/run/seq.sock"); c2.send(b"hi path")
    os.dup2(c1.fileno(), 62); os.dup2(c2.fileno(), 63)
""".replace("everyfd-abstract", name))
    before, after = case.roundtrip(setup)
    pid = after.pid
    child = _children(pid)[0]
    ab = got.sock(pid, 60)
    pa = got.sock(pid, 61)
    assert _readable(ab.fileno()) and _readable(pa.fileno())
    conn = got.keep(ab.accept()[0])
    assert _read_all(conn.fileno(), 11) == b"hi abstract"
    conn.send(b"back")
    assert _read_all(got.fd(child, 62), 4) == b"back"
    conn2 = got.keep(pa.accept()[0])
    assert conn2.recv(100) == b"hi path"
    c = got.keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    c.connect("\0" + name)
    c.send(b"new")
    assert _read_all(got.keep(ab.accept()[0]).fileno(), 3) == b"new"
    c2 = got.keep(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    c2.connect(f"/proc/{pid}/root/run/seq.sock")
    c2.send(b"new2")
    assert got.keep(pa.accept()[0]).recv(100) == b"new2"


def test_listener_held_by_parent_and_child_with_a_queued_connection(case, got):
    """A listener made before fork, so held by parent and child (a pre-fork server), with a
    connection queued whose client sent a request: dump takes the connection once (not once per
    fd: a second accept would wait for ever), and the restored listener accepts it with its data."""
    setup = py_hold("""
import socket
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind("/run/srv.sock"); srv.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect("/run/srv.sock"); c.send(b"GET /")
os.dup2(srv.fileno(), 64); os.dup2(c.fileno(), 65); srv.close(); c.close()
os.fork()
""")
    before, after = case.roundtrip(setup)
    child = _children(after.pid)[0]
    conn = got.keep(got.sock(child, 64).accept()[0])
    assert _read_all(conn.fileno(), 5) == b"GET /"
    conn.send(b"200")
    assert _read_all(got.fd(after.pid, 65), 3) == b"200"


def _fds_of(pid: int) -> dict[int, str]:
    return {int(n): os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}


def _by_comm(root: int) -> dict[str, int]:
    from zdtm.snapshot import tree_pids
    return {_comm(p): p for p in tree_pids(root)}


def test_real_tools(case, got):
    """Real programs in their waiting states: socat listening on a unix socket, inotifywait and
    tail -f watching, flock(1) holding a lock for its command, script(1) with its pty, a bash coproc
    with its two pipes. After restore (stand-ins: the programs do not run again) each fd does what
    the program's would: the listener takes a connection, the inotify watches report, the lock is
    the restored flock's, the pty carries bytes both ways, the coproc's pipes carry data."""
    setup = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts; ln -s pts/ptmx /dev/ptmx
mkdir /run/w; echo line1 > /run/tailed
socat UNIX-LISTEN:/run/socat.sock OPEN:/dev/null </dev/null >/dev/null 2>&1 &
inotifywait -m -e create --format %f /run/w </dev/null >/run/inotify.log 2>/run/inotify.err &
tail -f /run/tailed </dev/null >/run/tail.out 2>/dev/null &
tail=$!
flock /run/lk /.hold/mntcr-hold 100000 </dev/null >/dev/null 2>&1 &
script -q -c 'exec /.hold/mntcr-hold 100000' /dev/null </dev/null >/dev/null 2>&1 &
bash -c 'coproc /.hold/mntcr-hold 100000; wait' </dev/null >/dev/null 2>&1 &
# (each in the state the test uses: socat listening, not just bound; tail's watch added, after it
# printed the file)
n=600; until grep -q ' 00010000 .* /run/socat.sock$' /proc/net/unix; do n=$((n - 1)); [ $n -gt 0 ]; sleep 0.05; done
n=600; until grep -q established /run/inotify.err; do n=$((n - 1)); [ $n -gt 0 ]; sleep 0.05; done
n=600; until cat /proc/$tail/fdinfo/* 2>/dev/null | grep -q '^inotify wd'; do n=$((n - 1)); [ $n -gt 0 ]; sleep 0.05; done
# (flock locks before it runs its command; the tree's pid namespace shows its locks alone)
n=600; until [ -n "$(cat /proc/locks)" ]; do n=$((n - 1)); [ $n -gt 0 ]; sleep 0.05; done
hold
"""
    pid = case.start(setup, daemons=("socat", "inotifywait", "tail", "flock", "script", "bash"))
    before = take(pid)
    pid = case.cr(pid)
    assert_same(before, take(pid))
    tools = _by_comm(pid)
    # socat's listener queues a new connection.
    socks = [got.sock(tools["socat"], n) for n, t in _fds_of(tools["socat"]).items() if t.startswith("socket:")]
    lst, = [x for x in socks if x.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
    c = got.keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    c.connect(f"/proc/{pid}/root/run/socat.sock")
    conn = got.keep(lst.accept()[0])
    c.send(b"x")
    assert conn.recv(1) == b"x"
    # inotifywait's and tail's watches report.
    ino_w = next(n for n, t in _fds_of(tools["inotifywait"]).items() if t == "anon_inode:inotify")
    ino_t = next(n for n, t in _fds_of(tools["tail"]).items() if t == "anon_inode:inotify")
    open(f"/proc/{pid}/root/run/w/made", "w").close()
    with open(f"/proc/{pid}/root/run/tailed", "a") as f:
        f.write("line2\n")
    for who, n in (("inotifywait", ino_w), ("tail", ino_t)):
        fd = got.fd(tools[who], n)
        assert _readable(fd, 30), f"{who}'s restored inotify watch did not report"
    # flock's lock is the restored flock process's.
    with open("/proc/locks") as f:
        assert re.search(rf"FLOCK\s+ADVISORY\s+WRITE\s+{tools['flock']}\s", f.read())
    # script's pty: bytes written to its master come out of the slave its child holds, and back.
    fds = _fds_of(tools["script"])
    master = next(n for n, t in fds.items() if t.endswith("/ptmx"))
    child = next(p for p in _children(tools["script"]))
    slave = next(n for n, t in _fds_of(child).items() if t.startswith("/dev/pts/"))
    m, sl = got.fd(tools["script"], master), got.fd(child, slave)
    import termios
    attrs = termios.tcgetattr(sl)
    attrs[3] &= ~(termios.ICANON | termios.ECHO)
    termios.tcsetattr(sl, termios.TCSANOW, attrs)
    while _readable(sl, 0):   # (what script wrote when its stdin ended: kept, not what this checks)
        os.read(sl, 100)
    os.write(m, b"k")
    assert _read_all(sl, 1) == b"k"
    os.write(sl, b"j")
    assert _read_all(m, 1) == b"j"
    # The coproc's pipes: bash writes to the coproc's stdin and reads its stdout.
    shell = tools["bash"]
    co = _children(shell)[0]
    ends = {t: n for n, t in _fds_of(shell).items() if t.startswith("pipe:")}
    co_in, co_out = _fds_of(co)[0], _fds_of(co)[1]
    os.write(got.fd(shell, ends[co_in]), b"to coproc")
    assert _read_all(got.fd(co, 0), 9) == b"to coproc"
    os.write(got.fd(co, 1), b"from coproc")
    assert _read_all(got.fd(shell, ends[co_out]), 11) == b"from coproc"


# --- anon inodes ----------------------------------------------------------------------------------

def test_timerfd_fires_eventfd_counts_signalfd_reads_epoll_reports(case, got):
    """After restore: an armed timerfd fires, an eventfd keeps its count, a signalfd reads a signal
    sent to the restored process, an epoll reports the readiness of its restored set."""
    setup = py_hold("""
import select, signal, ctypes
libc = ctypes.CDLL(None, use_errno=True)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
mask = ctypes.c_uint64(1 << (signal.SIGUSR2 - 1))
s = libc.signalfd(-1, ctypes.byref(mask), 0); os.dup2(s, 70)
class TS(ctypes.Structure): _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
class ITS(ctypes.Structure): _fields_ = [("i", TS), ("v", TS)]
t = libc.timerfd_create(1, 0); libc.timerfd_settime(t, 0, ctypes.byref(ITS(TS(0, 0), TS(8, 0))), None)
os.dup2(t, 71)
e = os.eventfd(5); os.dup2(e, 72)
r, w = os.pipe(); os.dup2(r, 73); os.dup2(w, 74)
ep = select.epoll(); ep.register(72, select.EPOLLIN); ep.register(73, select.EPOLLIN); os.dup2(ep.fileno(), 75)
for fd in (s, t, e, r, w): os.close(fd)
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    e = got.fd(pid, 72)
    assert os.eventfd_read(e) == 5
    ep = got.keep(select.epoll.fromfd(os.dup(got.fd(pid, 75))))
    os.eventfd_write(e, 2)
    os.write(got.fd(pid, 74), b"x")
    ready = dict(ep.poll(30))
    assert set(ready) == {72, 73}, ready   # the data words are the fd numbers the holder registered
    t = got.fd(pid, 71)
    assert _readable(t, 60), "the restored timerfd never fired"
    assert struct.unpack("Q", os.read(t, 8))[0] >= 1
    # A signalfd reads the signals of whoever reads it: ours, blocked and raised, through the
    # restored signalfd's mask.
    import signal
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2, signal.SIGUSR1])
    try:
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)   # (not in its mask)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
        s = got.fd(pid, 70)
        assert _readable(s, 30)
        assert struct.unpack_from("I", os.read(s, 128))[0] == signal.SIGUSR2
        assert signal.sigtimedwait([signal.SIGUSR1], 0) is not None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_inotify_reports_after_restore(case, got):
    """inotifywait-like: an inotify watch on a directory reports a file made in it after restore."""
    setup = "mkdir /run/watched\n" + py_hold("""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
i = libc.inotify_init1(0); assert libc.inotify_add_watch(i, b"/run/watched", 0x100) >= 0   # IN_CREATE
os.dup2(i, 80); os.close(i)
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    i = got.fd(pid, 80)
    open(f"/proc/{pid}/root/run/watched/new", "w").close()
    assert _readable(i, 30)
    data = os.read(i, 4096)
    wd, mask, cookie, length = struct.unpack_from("iIII", data)
    assert mask & 0x100 and data[16:16 + length].rstrip(b"\0") == b"new"


def test_memfd_seals_and_content(case, got):
    """A memfd with content and seals: the restored one has both and refuses a write."""
    setup = py_hold("""
import fcntl
m = os.memfd_create("everyfd", os.MFD_ALLOW_SEALING); os.write(m, b"sealed content")
fcntl.fcntl(m, 1033, 0x0008 | 0x0002 | 0x0004)   # F_ADD_SEALS: WRITE, SHRINK, GROW
os.dup2(m, 90); os.close(m)
""")
    before, after = case.roundtrip(setup)
    m = got.fd(after.pid, 90)
    assert fcntl.fcntl(m, 1034) == 0x0008 | 0x0002 | 0x0004   # F_GET_SEALS
    assert os.pread(m, 100, 0) == b"sealed content"
    with pytest.raises(PermissionError):
        os.pwrite(m, b"x", 0)


def test_lock_owned_by_the_restored_process(case, got):
    """flock and a POSIX lock: still held after restore, by the restored process; another open
    of the file cannot take them."""
    setup = "echo data > /run/locked\n" + py_hold("""
import fcntl
f = os.open("/run/locked", os.O_RDWR); fcntl.flock(f, fcntl.LOCK_EX); os.dup2(f, 95)
g = os.open("/run/locked", os.O_RDWR); os.dup2(g, 96); fcntl.lockf(96, fcntl.LOCK_EX, 2, 0)
# (no close: closing any fd of the file drops the process's POSIX locks on it)
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    with open("/proc/locks") as f:
        locks = f.read()
    assert re.search(rf"FLOCK\s+ADVISORY\s+WRITE\s+{pid}\s", locks), locks
    assert re.search(rf"POSIX\s+ADVISORY\s+WRITE\s+{pid}\s", locks), locks
    other = os.open(f"/proc/{pid}/root/run/locked", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


def test_pidfd_of_a_living_child_signals_it(case, got):
    """A pidfd of a living child: after restore it refers to the restored child (a signal sent
    through it reaches that child) and polls readable once the child exits."""
    setup = py_hold("""
import time
pid = os.fork()
if pid == 0:
    pass
else:
    os.dup2(os.pidfd_open(pid), 97)
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    child = _children(pid)[0]
    p = got.fd(pid, 97)
    assert not _readable(p, 0)
    import signal
    signal.pidfd_send_signal(p, signal.SIGKILL)
    assert _readable(p, 30), "the pidfd did not report its restored child's exit"
    wait_until(lambda: not os.path.exists(f"/proc/{child}/status") or "Z (zombie)" in open(f"/proc/{child}/status").read(),
               "the child's death")


def test_epoll_oneshot_fired_and_an_fd_in_flight(case, got):
    """An epoll whose one-shot watch already fired and was not armed again (a worker thread took
    its event) beside an edge-triggered one, and a pipe's read end in flight on a datagram pair:
    after restore the one-shot watch stays quiet while the other reports, and the fd received from
    the pair reads what the pipe carries."""
    setup = py_hold("""
import select, socket, array
a_r, a_w = os.pipe(); b_r, b_w = os.pipe()
ep = select.epoll(); ep.register(a_r, select.EPOLLIN | select.EPOLLONESHOT); ep.register(b_r, select.EPOLLIN | select.EPOLLET)
os.write(a_w, b"1"); assert ep.poll(0) == [(a_r, select.EPOLLIN)]   # fired once: disarmed now
open("/run/ep", "w").write(f"{a_r} {b_r}")   # (the data words python's epoll gave them)
os.dup2(ep.fileno(), 131); os.dup2(a_r, 132); os.dup2(a_w, 133); os.dup2(b_r, 134); os.dup2(b_w, 135)
ep.close()
for fd in (a_r, a_w, b_r, b_w): os.close(fd)
s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
s1.sendmsg([b"here"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
os.close(r); os.dup2(w, 136); os.close(w)
os.dup2(s1.fileno(), 137); os.dup2(s2.fileno(), 138); s1.close(); s2.close()
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    ep = got.keep(select.epoll.fromfd(os.dup(got.fd(pid, 131))))
    os.write(got.fd(pid, 133), b"2")
    os.write(got.fd(pid, 135), b"3")
    with open(f"/proc/{pid}/root/run/ep") as f:
        oneshot, edge = map(int, f.read().split())
    assert ep.poll(5) == [(edge, select.EPOLLIN)], f"not only the edge-triggered one ({edge}; one-shot: {oneshot})"
    s2 = got.sock(pid, 138)
    msg, anc, _, _ = s2.recvmsg(100, socket.CMSG_SPACE(4))
    assert msg == b"here" and len(anc) == 1
    received = got.keep(struct.unpack("i", anc[0][2][:4])[0])
    os.write(got.fd(pid, 136), b"through")
    assert _read_all(received, 7) == b"through"


def test_epoll_oneshot_fired_on_a_file_with_nothing_to_report_refused_unstopped(case):
    """A one-shot watch that fired and whose event the program consumed (the pipe read empty):
    nothing would disarm it again at restore, so dump refuses it before the stop, saying what to do."""
    setup = STOP_WATCH + py_hold("""
import select
r, w = os.pipe()
ep = select.epoll(); ep.register(r, select.EPOLLIN | select.EPOLLONESHOT)
os.write(w, b"1"); assert ep.poll(0) == [(r, select.EPOLLIN)]; os.read(r, 1)
os.dup2(ep.fileno(), 140); ep.close()
""")
    pid = case.start(setup)
    with pytest.raises(CRError, match=r"fd 140 \(anon_inode:\[eventpoll\]\): epoll target fd \d+ is a one-shot watch "
                                      r"that fired .*: restore could not disarm it again; dump once the program armed"):
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_timers_on_other_clocks_and_a_nonblocking_pidfd(case, got):
    """A timerfd armed at an absolute CLOCK_REALTIME time and a periodic CLOCK_BOOTTIME one, an
    eventfd in semaphore mode, a PIDFD_NONBLOCK pidfd: after restore the timers fire, the
    semaphore counts down by one, the pidfd keeps its flag."""
    setup = py_hold("""
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
class TS(ctypes.Structure): _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
class ITS(ctypes.Structure): _fields_ = [("i", TS), ("v", TS)]
t = libc.timerfd_create(0, 0); libc.timerfd_settime(t, 1, ctypes.byref(ITS(TS(0, 0), TS(int(time.time()) + 6, 0))), None)
os.dup2(t, 150); os.close(t)
b = libc.timerfd_create(7, 0); libc.timerfd_settime(b, 0, ctypes.byref(ITS(TS(1, 0), TS(1, 0))), None)
os.dup2(b, 151); os.close(b)
e = os.eventfd(3, os.EFD_SEMAPHORE); os.dup2(e, 152); os.close(e)
pid = os.fork()
if pid:
    p = os.pidfd_open(pid, os.O_NONBLOCK); os.dup2(p, 153); os.close(p)
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    for n in (150, 151):
        fd = got.fd(pid, n)
        assert _readable(fd, 60), f"timerfd {n} did not fire"
        assert struct.unpack("Q", os.read(fd, 8))[0] >= 1
    e = got.fd(pid, 152)
    assert [os.eventfd_read(e) for _ in range(3)] == [1, 1, 1]
    with open(f"/proc/{pid}/fdinfo/153") as f:
        assert int(re.search(r"flags:\s+(\d+)", f.read())[1], 8) & os.O_NONBLOCK


# --- device nodes, directories --------------------------------------------------------------------

def test_device_nodes(case, got):
    """fds on /dev/null, /dev/zero, /dev/urandom and /dev/full: after restore each does what its
    device does."""
    setup = """
mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/full c 1 7
""" + py_hold("""
for n, (path, flags) in enumerate((("/dev/null", os.O_RDWR), ("/dev/zero", os.O_RDONLY), ("/dev/urandom", os.O_RDONLY),
                                   ("/dev/full", os.O_WRONLY))):
    f = os.open(path, flags); os.dup2(f, 100 + n); os.close(f)
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    assert os.write(got.fd(pid, 100), b"gone") == 4 and os.read(got.fd(pid, 100), 4) == b""
    assert os.read(got.fd(pid, 101), 4) == b"\0\0\0\0"
    assert len(os.read(got.fd(pid, 102), 16)) == 16
    with pytest.raises(OSError) as e:
        os.write(got.fd(pid, 103), b"x")
    assert e.value.errno == 28   # ENOSPC


# A holder that reads part of directory PATH (one getdents64 of 1 KiB: ., .. and some names) at fd N
# and writes the names it read, one a line, to /run/read-N.
_READ_PART = """
import ctypes, struct
def part(path, n, size=1024):
    d = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(size)
    got = ctypes.CDLL(None, use_errno=True).syscall(217, d, buf, size)   # getdents64
    assert got > 0
    names, i = [], 0
    while i < got:
        reclen = struct.unpack_from("H", buf.raw, i + 16)[0]
        names.append(buf.raw[i + 19:i + reclen].split(b"\\0")[0].decode()); i += reclen
    os.dup2(d, n); os.close(d)
    with open(f"/run/read-{n}", "w") as f:
        f.write("".join(x + "\\n" for x in names))
"""


def _rest(got, pid: int, n: int) -> list[str]:
    """The names fd `n` of process `pid` has left to read (its own getdents position moves)."""
    from engine import dirpos
    return [name.decode() for name, _ in dirpos.listing(got.fd(pid, n))]


def test_directory_offsets(case, got):
    """A directory of an external mount (/etc) read part way (a `find` or `du` mid-walk) and one of
    the container's tmpfs read to its end: each goes on where it was after restore: /etc's lists the
    names it had left to read, the tmpfs one nothing more."""
    setup = "mkdir /run/d; for i in $(seq 1 100); do touch /run/d/file$i; done\n" + py_hold(_READ_PART + """
part("/etc", 110)
d = os.open("/run/d", os.O_RDONLY | os.O_DIRECTORY); os.dup2(d, 111); os.close(d)
buf = ctypes.create_string_buffer(4096)
while ctypes.CDLL(None).syscall(217, 111, buf, 4096) > 0:   # (read to its end)
    pass
""")
    before, after = case.roundtrip(setup)
    pid = after.pid
    with open(f"/proc/{pid}/root/run/read-110") as f:
        read = f.read().split()
    left = _rest(got, pid, 110)
    assert read and left and sorted(read + left) == sorted([".", ".."] + os.listdir("/etc")), (read, left)
    assert _rest(got, pid, 111) == []


def test_directory_read_part_way_on_a_filesystem_restore_remakes_refused_unstopped(case):
    """A directory of the container's tmpfs read part way: the restored tmpfs lists its entries in
    another order, so dump refuses it, in one line that says what to do, before the stop."""
    setup = STOP_WATCH + "mkdir /run/d; for i in $(seq 1 100); do touch /run/d/file$i; done\n" + py_hold(
        _READ_PART + 'part("/run/d", 112)\n')
    pid = case.start(setup)
    with pytest.raises(CRError, match=r"fd 112 \(/run/d\): a directory read part way \(\d+ of its 102 entries\) on "
                                      r"a filesystem whose files restore makes again.*: not supported; dump it once"):
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"


# --- kinds no module dumps: refused before the stop, saying what to do ----------------------------

_UFFD = """
import ctypes
fd = ctypes.CDLL(None, use_errno=True).syscall(323, os.O_CLOEXEC)   # userfaultfd
assert fd >= 0, os.strerror(ctypes.get_errno())
os.dup2(fd, 120); os.close(fd)
"""
_PERF = """
import ctypes
attr = bytearray(128); attr[0:4] = (1).to_bytes(4, "little"); attr[4:8] = (128).to_bytes(4, "little")  # SOFTWARE, size
buf = ctypes.create_string_buffer(bytes(attr), 128)
fd = ctypes.CDLL(None, use_errno=True).syscall(298, buf, 0, -1, -1, 0)   # perf_event_open: cpu clock of itself
assert fd >= 0, os.strerror(ctypes.get_errno())
os.dup2(fd, 120); os.close(fd)
"""
_BPF = """
import ctypes
attr = ctypes.create_string_buffer((2).to_bytes(4, "little") + (4).to_bytes(4, "little") * 2 + (1).to_bytes(4, "little"), 72)
fd = ctypes.CDLL(None, use_errno=True).syscall(321, 0, attr, 72)   # BPF_MAP_CREATE: an array of one
assert fd >= 0, os.strerror(ctypes.get_errno())
os.dup2(fd, 120); os.close(fd)
"""


@pytest.mark.parametrize("body, what", [(_UFFD, r"userfaultfd"), (_PERF, r"perf_event"), (_BPF, r"bpf-map")],
                         ids=["userfaultfd", "perf_event", "bpf_map"])
def test_kinds_refused_before_the_stop_saying_what_to_do(case, body, what):
    """userfaultfd, perf_event_open and bpf fds: dump refuses in one line naming the fd and what to
    do, before it stops the tree, which keeps running."""
    pid = case.start(STOP_WATCH + py_hold(body))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    lines = [line for line in str(err.value).splitlines() if "fd 120" in line]
    assert len(lines) == 1 and re.search(rf"fd 120 \(anon_inode:\[?{what}\]?\): {what} fds are not supported "
                                         r"\(.+\): .*\bdump it\b", lines[0]), str(err.value)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}")
