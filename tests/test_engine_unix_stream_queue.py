"""What is queued on a unix stream comes back whole, or the dump is refused: a reader with
SO_PASSCRED gets no two writers' bytes in one read (the kernel stops where the writer changes), and
urgent data (MSG_OOB) stops every read at its mark (engine/fds/unix_queue.py `peek_stream`)."""

from __future__ import annotations

import re
import socket

import pytest

from enginecase import STOP_WATCH, CRError, case, grab_fd, py_hold, was_stopped  # noqa: F401  (fixture)

TWO_WRITERS = py_hold("""
import socket
a, b = socket.socketpair(); b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
a.send(b"from parent\\n")
if os.fork() == 0:
    a.send(b"from child\\n"); os._exit(0)
os.wait()
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); a.close(); b.close()
""")


def _drain(s: socket.socket) -> bytes:
    s.setblocking(False)
    out = b""
    while True:
        try:
            part = s.recv(4096)
        except BlockingIOError:
            return out
        if not part:
            return out
        out += part


def test_stream_written_by_two_processes_to_a_passcred_reader_comes_back_whole(case):
    """A parent and its forked child wrote to one end; the other end's reader set SO_PASSCRED. Dump
    kept the parent's bytes alone before (one peek stops where the writer changes): the restored
    queue held 12 of 23 bytes."""
    state = case.roundtrip(TWO_WRITERS)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 11)) as b:
        assert b.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
        assert _drain(b) == b"from parent\nfrom child\n"


URGENT = py_hold("""
import socket
a, b = socket.socketpair(); a.send(b"ab"); a.send(b"!", socket.MSG_OOB); a.send(b"cd")
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); a.close(); b.close()
""")


def test_urgent_data_on_a_stream_refused_before_the_stop(case):
    """A byte sent with MSG_OOB waits on the reader's end: a read stops at its mark, and restore would
    queue it as ordinary data (dump kept "ab" alone before, silently). Refused naming the socket,
    the tree never stopped."""
    pid = case.start(STOP_WATCH + URGENT)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"fd 11 \(socket:\[\d+\]\): urgent data \(a byte sent with MSG_OOB\) waits on a unix stream "
                     r"socket: not supported", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


PEEK_OFFSET = py_hold("""
import socket
a, b = socket.socketpair(); a.send(b"hello world")
b.setsockopt(socket.SOL_SOCKET, 42, 0); b.recv(6, socket.MSG_PEEK)   # (its own peek offset: 6)
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); a.close(); b.close()
""")


def test_stream_whose_reader_uses_a_peek_offset_comes_back_whole(case):
    """The reader peeked 6 bytes at a peek offset (SO_PEEK_OFF, as a program parsing a header does):
    dump's own peek must start at the queue's head, not at the reader's offset, and leave it."""
    state = case.roundtrip(PEEK_OFFSET)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 11)) as b:
        off = b.getsockopt(socket.SOL_SOCKET, 42)
        assert _drain(b) == b"hello world"
        assert off == 6


PIDFD_OPTS = py_hold("""
import socket
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.setsockopt(socket.SOL_SOCKET, 76, 1)   # SO_PASSPIDFD
a, b = socket.socketpair(); b.setsockopt(socket.SOL_SOCKET, 83, 0)   # SO_PASSRIGHTS off
os.dup2(d.fileno(), 10); os.dup2(b.fileno(), 11); d.close(); a.close(); b.close()
""")


def test_passpidfd_and_passrights_come_back(case):
    """SO_PASSPIDFD set (systemd's sockets: each message carries a pidfd of its sender) and
    SO_PASSRIGHTS turned off (fds refused in flight to it): both were dropped silently before."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.getsockopt(socket.SOL_SOCKET, 83)
        except OSError:
            pytest.skip("this kernel has no SO_PASSRIGHTS (Linux 6.16)")
    state = case.roundtrip(PIDFD_OPTS)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as d, socket.socket(fileno=grab_fd(state.pid, 11)) as b:
        assert d.getsockopt(socket.SOL_SOCKET, 76) == 1
        assert b.getsockopt(socket.SOL_SOCKET, 83) == 0


LOG_PIDFD = py_hold("""
import socket
os.makedirs("/run/j", exist_ok=True)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind("/run/j/log"); d.setsockopt(socket.SOL_SOCKET, 76, 1)
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.sendto(b"<6>hello", "/run/j/log"); c.close()
os.dup2(d.fileno(), 10); d.close()
""")


def test_datagram_queued_on_a_passpidfd_log_socket_comes_back(case):
    """A /dev/log-like datagram socket with SO_PASSPIDFD set and a line queued: dump's peek got a
    pidfd of the sender with it and refused the queue ("other ancillary data than fds") before."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.getsockopt(socket.SOL_SOCKET, 76)
        except OSError:
            pytest.skip("this kernel has no SO_PASSPIDFD (Linux 6.5)")
    state = case.roundtrip(LOG_PIDFD)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as d:
        d.setblocking(False)
        assert d.getsockopt(socket.SOL_SOCKET, 76) == 1
        assert d.recv(100) == b"<6>hello"


def test_the_prestop_peek_leaves_no_pidfd_behind():
    """Before the stop, dump peeks at the head of a queue with fds in flight; on a socket with
    SO_PASSPIDFD the peek also brings a pidfd of the sender, closed with the fds' copies (our fd
    table is as before)."""
    import os
    import types
    from engine.fds import unix_queue
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    try:
        try:
            b.setsockopt(socket.SOL_SOCKET, unix_queue.SO_PASSPIDFD, 1)
        except OSError:
            pytest.skip("this kernel has no SO_PASSPIDFD (Linux 6.5)")
        a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, "little"))])
        before = sorted(os.listdir("/proc/self/fd"))
        unix_queue.refuse_head_inflight(types.SimpleNamespace(where="test", objects={}), b)
        assert sorted(os.listdir("/proc/self/fd")) == before
        assert b.recv(8) == b"x"   # (a peek: the datagram still waits)
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()
