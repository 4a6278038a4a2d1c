"""Fds in flight (SCM_RIGHTS not received) on a stream socketpair: kept with the queue in segments and
sent again so (engine/fds/unix_pair.py; on a connection accepted from a listener too since session 34:
tests/test_engine_unix_accepted_inflight.py); of a kind dump does not keep at the queue's head,
refused before the tree is stopped."""

from __future__ import annotations

import array
import fcntl
import os
import select
import signal
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


def test_a_socket_in_flight_at_the_head_of_a_pair_refused_before_stop(case):
    _refused_before_stop(case, """
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
x, y = socket.socketpair()
a.send(b"head "); socket.send_fds(a, [b"fds"], [x.fileno()])
os.dup2(b.fileno(), 10); os.dup2(a.fileno(), 11); os.dup2(y.fileno(), 12)
""", "only files, FIFOs, pipes, memfds, eventfds, signalfds, timerfds and epolls in flight are supported")


SEG = {"data": "eA==", "fds": [{"kind": "pipe", "flags": 0, "pos": 0, "obj": "pipe-1"}]}


@pytest.mark.parametrize("obj", [
    {"data": ["eA==", ""], "msgs": [[SEG], []]},                       # bytes besides the segments
    {"data": ["", ""], "msgs": [["eA=="], []]},                        # segments without any fds
])
def test_validator_refuses_stream_segments_but_with_fds_of_a_socketpair(obj):
    from engine import image
    from engine.fds import unix_check
    with pytest.raises(image.ImageError, match="bad queued messages"):
        unix_check.check_object({"kind": "unix", "type": "stream", **obj}, "object x")


# CRIU's scm06: a datagram pair's ends, each bound to an abstract name, sent over each other (four
# messages, one fd each); and a stream pair whose end b waits with end a itself in flight.
SELVES = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.bind(b"\\0mntcr-scm-a"); b.bind(b"\\0mntcr-scm-b")
for via in (a, b):
    for x in (a, b):
        socket.send_fds(via, [b"m"], [x.fileno()])
s, t = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
s.send(b"head "); socket.send_fds(s, [b"fds"], [s.fileno()]); s.send(b" tail")
for n, x in ((10, a), (11, b), (12, s), (13, t)): os.dup2(x.fileno(), n)
""")


def _received(sock: socket.socket, size: int) -> tuple[bytes, int]:
    data, fds, _, _ = socket.recv_fds(sock, size, 1)
    assert len(fds) == 1, (data, fds)
    return data, fds[0]


def test_pair_ends_in_flight_on_their_own_pair_come_back_as_those_ends(case):
    """The ends of a pair in flight on that pair (scm06's vinaigrette; a stream end sent over itself)
    come back as the restored pair's own ends: each received fd is the same socket (its inode) as
    the process's fd on that end, with its name."""
    state = case.roundtrip(SELVES)[-1]
    mine = {n: grab_fd(state.pid, n) for n in (10, 11, 12, 13)}
    try:
        ino = {n: os.fstat(fd).st_ino for n, fd in mine.items()}
        for on, sent in ((10, (10, 11)), (11, (10, 11))):   # (b's sends wait on a, a's on b)
            with socket.socket(fileno=os.dup(mine[on])) as s:
                s.setblocking(False)
                for n in sent:
                    data, fd = _received(s, 10)
                    with socket.socket(fileno=fd) as got:
                        assert (data, os.fstat(fd).st_ino) == (b"m", ino[n])
                        assert got.getsockname() == b"\0mntcr-scm-" + (b"a" if n == 10 else b"b")
        with socket.socket(fileno=os.dup(mine[13])) as t:
            t.setblocking(False)
            data, fd = _received(t, 100)
            try:
                assert (data, os.fstat(fd).st_ino) == (b"head fds", ino[12])
            finally:
                os.close(fd)
            assert t.recv(100) == b" tail"
    finally:
        for fd in mine.values():
            os.close(fd)


def test_validator_takes_a_pair_end_in_flight_on_a_pair_only():
    """{kind: pair_end, end} in flight: on a pair's queue, end 0 or 1, nothing else; refused on any
    other socket's queue (nothing there to send)."""
    from engine import image
    from engine.fds import unix_check
    ok = {"kind": "unix", "type": "dgram", "data": ["", ""], "msgs": [[{"data": "eA==", "fds": [
        {"kind": "pair_end", "end": 1}]}], []]}
    unix_check.check_object(ok, "object x")
    for bad in ({"kind": "pair_end", "end": 2}, {"kind": "pair_end", "end": 0, "mnt": 1}, {"kind": "pair_end"}):
        with pytest.raises(image.ImageError, match="bad pair end in flight"):
            unix_check.check_object({**ok, "msgs": [[{"data": "eA==", "fds": [bad]}], []]}, "object x")
    with pytest.raises(image.ImageError, match="bad pair end in flight"):
        unix_check._check_msgs([{"data": "eA==", "fds": [{"kind": "pair_end", "end": 0}]}], "fd 3")


# CRIU's scm05: an epoll watching end b of a datagram pair, sent twice over end a and closed: the
# epoll exists in flight only. Its target is registered again by the stand-in making the pair, on
# the new end b under the number it had (20 here, b's own number 11: what epoll_ctl DEL will name).
EPOLL_INFLIGHT = py_hold("""
import select, socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
os.dup2(b.fileno(), 20)
ep = select.epoll(); ep.register(20, select.EPOLLIN)
os.close(20)
os.dup2(b.fileno(), 11)
ep.register(11, select.EPOLLIN | select.EPOLLET)
for _ in range(2): socket.send_fds(a, [b"e"], [ep.fileno()])
ep.close(); os.dup2(a.fileno(), 10)
""")


def test_an_epoll_in_flight_watching_its_pair_comes_back_armed(case):
    state = case.roundtrip(EPOLL_INFLIGHT)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 11)) as b:
        b.setblocking(False)
        data, fd = _received(b, 10)
        try:
            assert data == b"e"
            with open(f"/proc/self/fdinfo/{fd}") as f:
                tfds = sorted(line.split()[1] for line in f if line.startswith("tfd:"))
            assert tfds == ["11", "20"]
            ep = select.epoll.fromfd(fd)
            fd = -1
            with ep:
                # (the second epoll message still waits: end b is readable, both items report)
                assert len(ep.poll(0)) == 2
        finally:
            if fd >= 0:
                os.close(fd)


# An epoll in flight whose edge-triggered target's edge the program took: end b holds a datagram, the
# epoll reported it once (and has nothing more to report), then went in flight over b (queued on
# a: b gets no new edge). Restored, it must still have nothing to report ("quiet"): registered
# again on a ready end, it reported at once (before session 33).
EPOLL_QUIET_INFLIGHT = py_hold("""
import select, socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
os.dup2(b.fileno(), 11)
a.send(b"ready")
ep = select.epoll(); ep.register(11, select.EPOLLIN | select.EPOLLET)
assert ep.poll(0) == [(11, select.EPOLLIN)]   # (the edge taken)
assert ep.poll(0) == []
socket.send_fds(b, [b"e"], [ep.fileno()])
assert ep.poll(0) == []
ep.close(); os.dup2(a.fileno(), 10)
""")


def test_an_epoll_in_flight_whose_edge_was_taken_comes_back_quiet(case):
    state = case.roundtrip(EPOLL_QUIET_INFLIGHT)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as a:
        a.setblocking(False)
        data, fd = _received(a, 10)
        assert data == b"e"
        ep = select.epoll.fromfd(fd)
        with ep:
            assert ep.poll(0) == [], "the taken edge came back: the epoll reports what the program had taken"
            with socket.socket(fileno=grab_fd(state.pid, 10)) as again:
                again.send(b"more")   # (a new edge: reported once)
            assert ep.poll(0) == [(11, select.EPOLLIN)]
            assert ep.poll(0) == []


def test_an_epoll_in_flight_watching_another_file_refused_before_stop(case):
    _refused_before_stop(case, """
import select, socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
ep = select.epoll(); ep.register(r, select.EPOLLIN)
socket.send_fds(a, [b"e"], [ep.fileno()]); ep.close()
os.dup2(b.fileno(), 10); os.dup2(a.fileno(), 11); os.dup2(r, 12)
""", "an epoll in flight watching a file other than an end of the socket pair it waits on")


def test_validator_takes_an_epoll_in_flight_on_a_pair_only():
    from engine import image
    from engine.fds import unix_check
    ep = {"kind": "epoll", "flags": 2, "pos": 0, "targets": [{"fd": 5, "events": 1, "data": 5, "end": 1}]}
    unix_check._check_msgs([{"data": "eA==", "fds": [ep]}], "object x", pair=True)
    unix_check._check_msgs([{"data": "eA==", "fds": [{**ep, "targets": []}]}], "fd 3")
    unix_check._check_msgs([{"data": "eA==", "fds": [{**ep, "quiet": True}]}], "object x", pair=True)
    for bad in ({**ep, "quiet": False}, {**ep, "quiet": 1}, {**ep, "targets": [], "quiet": True}):
        with pytest.raises(image.ImageError, match="bad epoll in flight"):
            unix_check._check_msgs([{"data": "eA==", "fds": [bad]}], "object x", pair=True)
    with pytest.raises(image.ImageError, match="bad epoll in flight"):
        unix_check._check_msgs([{"data": "eA==", "fds": [ep]}], "fd 3")
    for bad in ({"fd": 5, "events": 1, "data": 5, "end": 2}, {"fd": 5, "events": 1 << 30, "data": 5, "end": 0},
                {"fd": 5, "events": 1, "data": 5}):
        with pytest.raises(image.ImageError, match="bad target of an epoll in flight"):
            unix_check._check_msgs([{"data": "eA==", "fds": [{**ep, "targets": [bad]}]}], "x", pair=True)


# A memfd in flight (what Wayland clients and PipeWire send): sealed, written, its offset moved,
# sent and closed by its sender; its content, name, seals and offset come back with it.
MEMFD_INFLIGHT = py_hold("""
import fcntl, socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
m = os.memfd_create("pool", os.MFD_ALLOW_SEALING)
os.write(m, b"shared pixels"); os.lseek(m, 7, os.SEEK_SET)
fcntl.fcntl(m, 1033, 4)   # F_ADD_SEALS, F_SEAL_GROW
socket.send_fds(a, [b"m"], [m]); os.close(m)
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11)
""")


def test_a_memfd_in_flight_comes_back_with_its_content(case):
    state = case.roundtrip(MEMFD_INFLIGHT)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 11)) as b:
        b.setblocking(False)
        data, fd = _received(b, 10)
        try:
            assert data == b"m" and os.readlink(f"/proc/self/fd/{fd}") == "/memfd:pool (deleted)"
            assert os.lseek(fd, 0, os.SEEK_CUR) == 7 and os.pread(fd, 100, 0) == b"shared pixels"
            assert fcntl.fcntl(fd, 1034) == 4   # F_GET_SEALS
        finally:
            os.close(fd)


def test_validator_takes_a_memfd_in_flight_by_its_object_only():
    from engine import image
    from engine.fds import unix_check
    m = {"kind": "memfd", "flags": 2, "pos": 0, "obj": "memfd-7"}
    unix_check._check_msgs([{"data": "eA==", "fds": [m]}], "fd 3")
    for bad in ({**m, "mnt": 1, "path": "/x"}, {k: v for k, v in m.items() if k != "obj"}):
        with pytest.raises(image.ImageError, match="bad memfd in flight"):
            unix_check._check_msgs([{"data": "eA==", "fds": [bad]}], "fd 3")


# An eventfd, a signalfd and a timerfd in flight (vhost-user backends get their eventfds so), each
# closed by its sender: their state (a count, a mask, a clock and interval) comes back with them.
STATE_INFLIGHT = py_hold("""
import signal, socket, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
e = os.eventfd(5, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
mask = ctypes.c_uint64(1 << (signal.SIGUSR1 - 1))
s = libc.signalfd(-1, ctypes.byref(mask), 0)
t = libc.timerfd_create(time.CLOCK_MONOTONIC, 0)
spec = struct.pack("qqqq", 3600, 0, 3600, 0)
libc.timerfd_settime(t, 0, spec, None)
socket.send_fds(a, [b"3"], [e, s, t]); os.close(e); os.close(s); os.close(t)
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11)
""")


def test_eventfd_signalfd_and_timerfd_in_flight_come_back_with_their_state(case):
    state = case.roundtrip(STATE_INFLIGHT)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 11)) as b:
        b.setblocking(False)
        data, fds, _, _ = socket.recv_fds(b, 10, 3)
        try:
            assert data == b"3" and len(fds) == 3
            info = []
            for fd in fds:
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    info.append(dict(line.split(":", 1) for line in f.read().splitlines()))
            assert os.eventfd_read(fds[0]) == 1 and info[0]["eventfd-count"].strip() == "5"
            assert info[0]["eventfd-semaphore"].strip() == "1" and int(info[0]["flags"], 8) & os.O_NONBLOCK
            assert int(info[1]["sigmask"], 16) == 1 << (signal.SIGUSR1 - 1)
            assert info[2]["clockid"].strip() == "1" and info[2]["it_interval"].strip() == "(3600, 0)"
            assert 0 < int(info[2]["it_value"].strip("() ").split(",")[0]) <= 3600
        finally:
            for fd in fds:
                os.close(fd)


def test_validator_checks_an_eventfd_in_flight_as_an_eventfd():
    from engine import image
    from engine.fds import unix_check
    e = {"kind": "eventfd", "flags": 2, "pos": 0, "count": 5, "semaphore": True}
    unix_check._check_msgs([{"data": "eA==", "fds": [e]}], "fd 3")
    no_count = {k: v for k, v in e.items() if k != "count"}
    for bad in ({**e, "count": -1}, {**e, "semaphore": "yes"}, {**e, "mnt": 1}, no_count):
        with pytest.raises(image.ImageError):
            unix_check._check_msgs([{"data": "eA==", "fds": [bad]}], "fd 3")
