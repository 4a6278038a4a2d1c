"""Fds in flight (SCM_RIGHTS not received) on a stream socketpair: kept with the queue in segments and
sent again so (engine/fds/unix_pair.py); on a connection accepted from a listener, or of a kind dump
does not keep at the queue's head, refused before the tree is stopped."""

from __future__ import annotations

import array
import os
import socket

import pytest

from enginecase import STOP_WATCH, CRError, case, grab_fd, py_hold, was_stopped  # noqa: F401  (fixture)

PAIR = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
r, w = os.pipe(); os.write(w, b"in-pipe")
a.send(b"head "); socket.send_fds(a, [b"fds"], [r]); a.send(b" tail")
os.close(r); os.dup2(b.fileno(), 10); os.dup2(a.fileno(), 11); os.dup2(w, 12)
""")


def test_stream_pair_fds_in_flight_come_back_in_place(case):
    state = case.roundtrip(PAIR)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as b:
        b.setblocking(False)
        data, anc, _, _ = b.recvmsg(100, socket.CMSG_SPACE(8))
        assert data == b"head fds"
        (fd,) = array.array("i", anc[0][2][:4])
        try:
            assert os.read(fd, 100) == b"in-pipe"
        finally:
            os.close(fd)
        assert b.recv(100) == b" tail"


def _refused_before_stop(case, body: str, what: str) -> None:
    pid = case.start(STOP_WATCH + py_hold(body))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert what in str(err.value), err.value
    assert not was_stopped(pid)


def test_fds_in_flight_on_an_accepted_connection_refused_before_stop(case):
    _refused_before_stop(case, """
import socket
ls = socket.socket(socket.AF_UNIX); ls.bind("/run/l.sock"); ls.listen(1)
c = socket.socket(socket.AF_UNIX); c.connect("/run/l.sock"); a, _ = ls.accept()
socket.send_fds(c, [b"x"], [0]); os.dup2(a.fileno(), 10); os.dup2(c.fileno(), 11)
""", "on a stream socket that is not an end of a socketpair: not supported")


def test_a_socket_in_flight_at_the_head_of_a_pair_refused_before_stop(case):
    _refused_before_stop(case, """
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
x, y = socket.socketpair()
a.send(b"head "); socket.send_fds(a, [b"fds"], [x.fileno()])
os.dup2(b.fileno(), 10); os.dup2(a.fileno(), 11); os.dup2(y.fileno(), 12)
""", "only files, FIFOs and pipes in flight are supported")


SEG = {"data": "eA==", "fds": [{"kind": "pipe", "flags": 0, "pos": 0, "obj": "pipe-1"}]}


@pytest.mark.parametrize("obj", [
    {"data": ["eA==", ""], "msgs": [[SEG], []]},                       # bytes besides the segments
    {"data": ["", ""], "msgs": [["eA=="], []]},                        # segments without any fds
    {"data": ["", ""], "msgs": [[SEG], []], "via": {"end": 0, "path": "/run/s"}},   # an accepted connection's
])
def test_validator_refuses_stream_segments_but_with_fds_of_a_socketpair(obj):
    from engine import image
    from engine.fds import unix_check
    with pytest.raises(image.ImageError, match="bad queued messages"):
        unix_check.check_object({"kind": "unix", "type": "stream", **obj}, "object x")
