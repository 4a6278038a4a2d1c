"""Pending connections whose client is gone (CRIU's sk-unix-listen03 and -04): a client connected,
maybe sent, and closed before its listener accepted. The connection stays in the listener's queue:
accept() gives it, with what the client sent, then end of file. sock_diag names such a client 0
and no fd reaches what waits, so dump takes those connections last (the tree is killed after)
and restore makes each again from a fresh client that connects, sends and closes, in queue order
among the live clients' connections."""

from __future__ import annotations

import os
import re
import socket

import pytest

from enginecase import STOP_WATCH, CRError, case, grab_fd, py_hold, was_stopped  # noqa: F401  (fixture)

SETUP = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
srv = socket.socket(socket.AF_UNIX); srv.bind("/mnt/t/srv"); srv.listen(8)
def client(data=b"", close=False):
    c = socket.socket(socket.AF_UNIX); c.connect("/mnt/t/srv")
    if data: c.send(data)
    if close: c.close()
    return c
live0 = client()
client(b"sent, then gone", close=True)
client(close=True)
live1 = client(b"still here")
gone = b"\\0zdtm-gone-" + os.urandom(4).hex().encode()   # (the host's network namespace: one name per run)
sq = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); sq.bind(gone); sq.listen(4)
g = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); g.connect(gone); g.send(b"one"); g.send(b"two")
g.close()
os.dup2(srv.fileno(), 10); os.dup2(live0.fileno(), 11); os.dup2(live1.fileno(), 12); os.dup2(sq.fileno(), 13)
for x in (srv, live0, live1, sq): x.close()
""").replace("exec python3", "exec unshare --net python3", 1)   # (its abstract name: its own namespace's)


def _drain(a: socket.socket) -> list:
    """What accepted socket `a` reads: each recv's bytes, then "EOF" or "open" (nothing more yet)."""
    a.setblocking(False)
    out = []
    while True:
        try:
            data = a.recv(100)
        except BlockingIOError:
            return out + ["open"]
        if not data:
            return out + ["EOF"]
        out.append(data)


def test_pending_connections_whose_client_is_gone(case):
    state = case.roundtrip(SETUP)[-1]
    got = []
    for fd, n in ((10, 4), (13, 1)):
        with socket.socket(fileno=grab_fd(state.pid, fd)) as lst:
            lst.setblocking(False)
            for _ in range(n):
                a, _ = lst.accept()
                with a:
                    got.append(_drain(a))
            with pytest.raises(BlockingIOError):
                lst.accept()
    assert got == [["open"], [b"sent, then gone", "EOF"], ["EOF"], [b"still here", "open"],
                   [b"one", b"two", "EOF"]]


def test_pending_connection_whose_client_is_gone_refused_with_leave_running(case):
    """With --leave-running: whether anything waits on such a connection only accept() tells, which
    would take it from a tree that keeps running: refused before the stop, the connection left."""
    pid = case.start(STOP_WATCH + SETUP)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir(), ("--leave-running",))
    assert re.search(r"process \d+ fd 10 \(socket:\[\d+\]\): listening unix socket with a connection not yet "
                     r"accepted whose client is gone \(what it sent may wait there\): only accept\(\) reads it",
                     str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    with socket.socket(fileno=grab_fd(pid, 10)) as lst:
        lst.setblocking(False)
        got = []
        for _ in range(4):
            a, _ = lst.accept()
            with a:
                got.append(_drain(a))
    assert got == [["open"], [b"sent, then gone", "EOF"], ["EOF"], [b"still here", "open"]]
