"""Unix sockets whose socket file was unlinked since (ghost sockets, CRIU's sk-unix-dgram-ghost and
del_standalone_un): a datagram server with a client in a child and a datagram queued, its file
unlinked and its directory removed; a listener whose file another listener's replaced (rename
over it). After restore each keeps its name, its file is unlinked again on the same mount, the
directory stays gone, the client's connection and the queued datagram reach the server, and the
live name still leads to the other listener. Before Linux 6.15 (strategy sources=yard: no mounts
on detached mounts) the names are bound aside from a private mount namespace, with the same outcome."""

from __future__ import annotations

import fcntl
import os
import re
import socket

import pytest

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

SETUP = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d /mnt/t/e
""" + py_hold("""
import socket
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind("/mnt/t/e/g")
cli = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); cli.connect("/mnt/t/e/g")
cli.send(b"queued before dump")
os.unlink("/mnt/t/e/g"); os.rmdir("/mnt/t/e")
l1 = socket.socket(socket.AF_UNIX); l1.bind("/mnt/t/d/s"); l1.listen(4)
os.rename("/mnt/t/d/s", "/mnt/t/d/tmp")
l2 = socket.socket(socket.AF_UNIX); l2.bind("/mnt/t/d/s"); l2.listen(4)
os.rename("/mnt/t/d/tmp", "/mnt/t/d/s")   # (l2's file is unlinked, l1's has the name)
if os.fork() == 0:
    os.dup2(cli.fileno(), 11)
else:
    os.dup2(srv.fileno(), 10); os.dup2(l1.fileno(), 12); os.dup2(l2.fileno(), 13)
for x in (srv, cli, l1, l2): x.close()
""")


def _grab(pid: int, fd: int) -> socket.socket:
    return socket.socket(fileno=grab_fd(pid, fd))


def _file(pid: int, fd: int) -> tuple[int, int]:
    """(link count, mount id) of the file of bound socket fd `fd` of `pid` (SIOCUNIXFILE)."""
    with _grab(pid, fd) as s:
        f = fcntl.ioctl(s.fileno(), 0x89E0)
    try:
        with open(f"/proc/self/fdinfo/{f}") as info:
            mnt = next(int(line.split()[1]) for line in info if line.startswith("mnt_id:"))
        return os.fstat(f).st_nlink, mnt
    finally:
        os.close(f)


def _mount_of(pid: int, mountpoint: str) -> int:
    with open(f"/proc/{pid}/mountinfo") as f:
        return next(int(line.split()[0]) for line in f if line.split()[4] == mountpoint)


OLD = ["", "sources=yard", "flags=remount,sources=yard,sharing=construct,ids=mountinfo"]


@pytest.mark.parametrize("strategy", OLD)
def test_ghost_sockets_round_trip(case, strategy, monkeypatch):
    if strategy:
        monkeypatch.setenv("MNTCR_STRATEGY", strategy)
    states = case.roundtrip(SETUP, check="ls -A /mnt/t /mnt/t/d")
    state = states[-1]
    assert states[0].snap.check_output == state.snap.check_output   # (no directory of restore's left)
    fds = "\n".join(state.root.fds)
    assert re.search(r"^10: .*name='/mnt/t/e/g'", fds, re.M), fds
    assert re.search(r"^13: .*name='/mnt/t/d/s' listening=1", fds, re.M), fds
    t = _mount_of(state.pid, "/mnt/t")
    assert _file(state.pid, 10) == (0, t) and _file(state.pid, 13) == (0, t)
    assert _file(state.pid, 12) == (1, t)
    with open(f"/proc/{state.pid}/task/{state.pid}/children") as f:
        kid = int(f.read().split()[0])
    with _grab(state.pid, 10) as srv, _grab(kid, 11) as cli:
        cli.send(b"after restore")
        assert srv.recv(100, socket.MSG_DONTWAIT) == b"queued before dump"
        assert srv.recv(100, socket.MSG_DONTWAIT) == b"after restore"
    # The live name leads to the listener that had it (fd 12), not to the ghost (fd 13).
    with _grab(state.pid, 12) as l1, _grab(state.pid, 13) as l2:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(f"/proc/{state.pid}/root/mnt/t/d/s")
            l1.settimeout(5)
            a, _ = l1.accept()
            a.close()
        l2.setblocking(False)
        with pytest.raises(BlockingIOError):
            l2.accept()


@pytest.mark.parametrize("strategy", OLD)
def test_ghost_pair_ends_and_connection_of_a_ghost_listener(case, strategy, monkeypatch):
    """CRIU's sk-unix01: a datagram socket pair whose ends were bound to one name in turn (each file
    unlinked), and a connection accepted from a listener whose file and directory were removed.
    After restore the ends keep their names and talk, and the accepted end has the listener's name."""
    if strategy:
        monkeypatch.setenv("MNTCR_STRATEGY", strategy)
    setup = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/f
""" + py_hold("""
import socket
p0, p1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
p0.bind("/mnt/t/f/p"); os.unlink("/mnt/t/f/p"); p1.bind("/mnt/t/f/p"); os.unlink("/mnt/t/f/p")
lg = socket.socket(socket.AF_UNIX); lg.bind("/mnt/t/f/l"); lg.listen(4)
cc = socket.socket(socket.AF_UNIX); cc.connect("/mnt/t/f/l"); acc, _ = lg.accept()
os.unlink("/mnt/t/f/l"); os.rmdir("/mnt/t/f")
for n, s in ((14, p0), (15, p1), (16, lg), (17, cc), (18, acc)):
    os.dup2(s.fileno(), n); s.close()
""")
    state = case.roundtrip(setup, check="ls -A /mnt/t")[-1]
    fds = "\n".join(state.root.fds)
    for n, name in ((14, "p"), (15, "p"), (16, "l"), (18, "l")):
        assert re.search(rf"^{n}: .*name='/mnt/t/f/{name}'", fds, re.M), (n, fds)
    assert not os.path.exists(f"/proc/{state.pid}/root/mnt/t/f")
    with _grab(state.pid, 14) as p0, _grab(state.pid, 15) as p1:
        p1.send(b"pair")
        assert p0.recv(10, socket.MSG_DONTWAIT) == b"pair"
    with _grab(state.pid, 17) as cc, _grab(state.pid, 18) as acc:
        cc.send(b"stream")
        assert acc.recv(10, socket.MSG_DONTWAIT) == b"stream"
