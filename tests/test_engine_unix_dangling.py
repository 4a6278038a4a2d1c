"""A stream socket whose peer wrote and then closed (CRIU's sockets02): the bytes still queued come
back, then end of file."""

from __future__ import annotations

import socket

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

SETUP = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM); b.sendall(b"written before close"); b.close()
os.dup2(a.fileno(), 10); a.close()
""")


def _grab(pid: int, fd: int) -> socket.socket:
    return socket.socket(fileno=grab_fd(pid, fd))


def test_stream_data_of_a_closed_peer(case):
    state = case.roundtrip(SETUP)[-1]
    with _grab(state.pid, 10) as a:
        a.setblocking(False)
        assert a.recv(100) == b"written before close"
        assert a.recv(100) == b""   # (end of file: the peer is gone, as at dump)
