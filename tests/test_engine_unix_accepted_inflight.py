"""Fds in flight (SCM_RIGHTS not received yet) on a connection accepted from a listener, stream or
seqpacket, either way: what a D-Bus or Wayland server and its clients pass (a memfd, a pipe end).
Refused before session 34 (a stream's before the stop, a seqpacket's after it): the connection is
made again through a listener at its name before any fd (unix_pair.prepare), and what waits on it
is sent again once its first end is opened, the fds in flight with it (unix.py `_fill_late`)."""

from __future__ import annotations

import os
import socket

import pytest

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

ACCEPTED = """
import socket
ls = socket.socket(socket.AF_UNIX, socket.{typ}); ls.bind("/run/l.sock"); ls.listen(1)
c = socket.socket(socket.AF_UNIX, socket.{typ}); c.connect("/run/l.sock"); a, _ = ls.accept()
r, w = os.pipe(); os.write(w, b"in the pipe")
m = os.memfd_create("pool"); os.write(m, b"pixels"); os.lseek(m, 2, os.SEEK_SET)
c.send(b"hello ")
socket.send_fds(c, [b"with a pipe"], [r])
c.send(b" plain")
socket.send_fds(a, [b"back: a memfd"], [m])
socket.send_fds(a, [b"and its own end"], [a.fileno()])
os.close(r); os.close(m)
for x, n in ((a.fileno(), 10), (c.fileno(), 11), (w, 12), (ls.fileno(), 13)): os.dup2(x, n)
for s in (a, c, ls): s.close()
"""


def _take(s: socket.socket) -> tuple[bytes, list[int]]:
    s.setblocking(False)   # (python 3.11's recv_fds drops its flags)
    data, fds, _, _ = socket.recv_fds(s, 100, 4)
    return data, fds


@pytest.mark.parametrize("typ", ["SOCK_STREAM", "SOCK_SEQPACKET"])
def test_fds_in_flight_on_an_accepted_connection_come_back(case, typ):
    """Both directions come back in order with their fds: the pipe's read end (its bytes), the memfd
    (content and offset), the accepted end itself (the same socket as fd 10); the listener still
    takes connections at its name."""
    state = case.roundtrip(py_hold(ACCEPTED.format(typ=typ)))[-1]
    a, c = socket.socket(fileno=grab_fd(state.pid, 10)), socket.socket(fileno=grab_fd(state.pid, 11))
    with a, c:
        got = []
        while True:
            try:
                got.append(_take(a))
            except BlockingIOError:
                break
        stream = typ == "SOCK_STREAM"
        # (a stream's reads stop at the bytes that carried fds: "hello with a pipe", then " plain")
        assert [d for d, _ in got] == ([b"hello with a pipe", b" plain"] if stream else
                                       [b"hello ", b"with a pipe", b" plain"]), got
        fds = [f for _, fs in got for f in fs]
        assert len(fds) == 1 and os.read(fds[0], 100) == b"in the pipe"
        os.close(fds[0])
        data, fds = _take(c)
        assert data == b"back: a memfd" and len(fds) == 1
        assert os.lseek(fds[0], 0, os.SEEK_CUR) == 2 and os.pread(fds[0], 10, 0) == b"pixels"
        os.close(fds[0])
        data, fds = _take(c)
        assert data == b"and its own end" and len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(a.fileno()).st_ino
        os.close(fds[0])
        assert a.getsockname() == "/run/l.sock"


ONE_WAY = """
import socket
{make}
r, w = os.pipe(); os.write(w, b"in the pipe")
socket.send_fds(c, [b"fds"], [r]); os.close(r)
a.send(b"plain bytes back")
for x, n in ((a.fileno(), 10), (c.fileno(), 11), (w, 12)): os.dup2(x, n)
"""
MAKE = {"socketpair": "a, c = socket.socketpair()",
        "accepted": 'ls = socket.socket(socket.AF_UNIX); ls.bind("/run/l.sock"); ls.listen(1)\n'
                    'c = socket.socket(socket.AF_UNIX); c.connect("/run/l.sock"); a, _ = ls.accept(); ls.close()'}


@pytest.mark.parametrize("how", sorted(MAKE))
def test_fds_in_flight_one_way_and_bytes_the_other(case, how):
    """A stream pair with fds in flight towards one end and bytes alone towards the other: both
    queues come back (the one without fds sent as one segment)."""
    state = case.roundtrip(py_hold(ONE_WAY.format(make=MAKE[how])))[-1]
    a, c = socket.socket(fileno=grab_fd(state.pid, 10)), socket.socket(fileno=grab_fd(state.pid, 11))
    with a, c:
        data, fds = _take(a)
        assert data == b"fds" and len(fds) == 1 and os.read(fds[0], 100) == b"in the pipe"
        os.close(fds[0])
        assert _take(c) == (b"plain bytes back", [])


def test_validator_takes_segments_of_an_accepted_connection():
    """A stream pair connected through a listener's name ("via") may hold segments with fds in
    flight (refused by the validator before session 34); bytes besides them still may not."""
    from engine import image
    from engine.fds import unix_check
    seg = {"data": "eA==", "fds": [{"kind": "pipe", "flags": 0, "pos": 0, "obj": "pipe-1"}]}
    obj = {"kind": "unix", "type": "stream", "data": ["", ""], "msgs": [[seg], ["eQ=="]],
           "via": {"end": 0, "path": "/run/s"}}
    unix_check.check_object(obj, "object x")
    with pytest.raises(image.ImageError, match="bad queued messages"):
        unix_check.check_object({**obj, "data": ["", "eQ=="]}, "object x")
