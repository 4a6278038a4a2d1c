"""A socket whose peer wrote and then closed (CRIU's sockets02, sockets02-seqpacket): what is still
queued comes back, then end of file."""

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


SEQPACKET = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
b.send(b"one"); b.send(b"two"); b.close()
os.dup2(a.fileno(), 10); a.close()
""")


def test_seqpacket_messages_of_a_closed_peer_then_end_of_file(case):
    """A seqpacket pair whose peer sent two messages and closed (CRIU's sockets02-seqpacket): past
    the messages a peek returns 0 bytes (its end of file) as an empty message would; dump tells them
    apart (SO_PASSCRED: only a message carries credentials) and restore gives back the two messages,
    then end of file. The socket's own SO_PASSCRED is left as it was."""
    state = case.roundtrip(SEQPACKET)[-1]
    with _grab(state.pid, 10) as a:
        a.setblocking(False)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 0
        assert [a.recv(100), a.recv(100), a.recv(100)] == [b"one", b"two", b""]


def test_seqpacket_empty_message_of_a_closed_peer_kept(case):
    """An empty message before the end of file is a message, not the end of file (it was taken for
    the end of file, silently dropped, before; then refused): kept in its place, the end of file
    after it. Only a message carries credentials (SO_PASSCRED) to tell them apart."""
    state = case.roundtrip(SEQPACKET.replace('b.send(b"two")', 'b.send(b"")'))[-1]
    with _grab(state.pid, 10) as a:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        got = [a.recvmsg(100, 64) for _ in range(3)]
        assert [(data, bool(anc)) for data, anc, _f, _a in got] == [(b"one", True), (b"", True), (b"", False)]
