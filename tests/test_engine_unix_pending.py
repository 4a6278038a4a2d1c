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


def _drain(a: socket.socket, urgent: bool = False) -> list:
    """What accepted socket `a` reads: each recv's bytes, then "EOF" or "open" (nothing more yet);
    with `urgent`, its urgent byte where its mark is: ("oob", byte)."""
    import fcntl
    import struct
    a.setblocking(False)
    out = []
    while True:
        if urgent and struct.unpack("i", fcntl.ioctl(a.fileno(), 0x8905, b"\0\0\0\0"))[0]:   # (SIOCATMARK)
            try:
                out.append(("oob", a.recv(1, socket.MSG_OOB)))
            except OSError:
                pass
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


URGENT = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t
""" + py_hold("""
import socket
srv = socket.socket(socket.AF_UNIX); srv.bind("/mnt/t/srv"); srv.listen(8)
live = socket.socket(socket.AF_UNIX); live.connect("/mnt/t/srv")
live.send(b"ab"); live.send(b"!", socket.MSG_OOB); live.send(b"cd")
gone = socket.socket(socket.AF_UNIX); gone.connect("/mnt/t/srv"); gone.send(b"?", socket.MSG_OOB); gone.close()
os.dup2(srv.fileno(), 10); os.dup2(live.fileno(), 11)
for x in (srv, live): x.close()
""")


def test_urgent_data_on_pending_connections_keeps_its_mark(case):
    """A byte sent with MSG_OOB by a pending connection's client (live, or gone since) waits apart
    from the stream at its mark: a read stops there and one from the mark skips it (dump read the
    other bytes alone before, and the byte was lost silently). Restore sends it with MSG_OOB where
    it was."""
    try:
        a, b = socket.socketpair()
        with a, b:
            a.send(b"!", socket.MSG_OOB)
    except OSError:
        pytest.skip("this kernel has no MSG_OOB on unix streams (Linux 5.15)")
    state = case.roundtrip(URGENT)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as lst:
        lst.setblocking(False)
        got = []
        for _ in range(2):
            a, _ = lst.accept()
            with a:
                got.append(_drain(a, urgent=True))
    assert got == [[b"ab", ("oob", b"!"), b"cd", "open"], [("oob", b"?"), "EOF"]]


@pytest.mark.parametrize("oob, sent, ok", [
    ({"at": 2, "byte": "IQ=="}, "YWJjZA==", True),     # "!" after "ab" of "abcd"
    ({"at": 0, "byte": "IQ=="}, None, True),           # the urgent byte alone
    ({"at": 5, "byte": "IQ=="}, "YWJjZA==", False),    # a mark past the bytes sent
    ({"at": 0, "byte": "ISE="}, None, False),          # two bytes
    ({"at": -1, "byte": "IQ=="}, None, False),
    ({"at": 0, "byte": "IQ==", "x": 1}, None, False),
    ({"at": 0}, None, False),
])
def test_the_validator_checks_a_pending_connections_urgent_byte(oob, sent, ok):
    """An image's `oob` on a pending connection's client (and on a gone client's record): one byte,
    its mark within what was sent; any other is refused in one line."""
    from engine.fds import unix_check
    from engine.image import ImageError
    client = {"type": "stream", "connect": {"path": "srv", "mnt": 1, "at": "/"}, "oob": oob}
    listener = {"type": "stream", "listen": 8, "gone": [{"order": 0, "oob": oob}]}
    if sent is not None:
        client["sent"] = listener["gone"][0]["sent"] = sent
    client["connect"]["order"] = 0
    for entry in (client, listener):
        if ok:
            unix_check.check(entry, "fd 3")
        else:
            with pytest.raises(ImageError, match=r"^bad image: fd 3: bad (urgent byte sent on a connection not yet "
                                                 r"accepted|pending connections whose client is gone)$"):
                unix_check.check(entry, "fd 3")
