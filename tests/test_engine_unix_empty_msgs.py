"""Empty messages on datagram and seqpacket sockets are messages: a reader's recv() returns 0 for
each, in its place. Dump peeks a queue at offsets (SO_PEEK_OFF), which the kernel lets pass over
an empty message once anyone peeked at it (skb->peeked); and FIONREAD gives a datagram socket's
first message's length only, 0 when it is empty. A datagram pair whose first message was empty
lost its whole queue, a queue headed by an empty message lost it, and a middle one a program had
peeked at was lost silently (engine/fds/unix_queue.py, unix_pair.py `_hidden`)."""

from __future__ import annotations

import os
import re
import socket
import types

import pytest

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)
from engine.fds import FdError, unix_pair, unix_queue


def _drain(s: socket.socket, most: int = 8) -> list[bytes]:
    """What reads give, up to `most` of them (a seqpacket socket's end of file reads b"" each time)."""
    out = []
    s.setblocking(False)
    while len(out) < most:
        try:
            out.append(s.recv(1 << 17))
        except BlockingIOError:
            break
    return out


def _peeked(s: socket.socket, n: int) -> None:
    """Peek at `n` messages of `s` at offsets, as a program sizing its datagrams does."""
    s.setsockopt(socket.SOL_SOCKET, 42, 0)
    for _ in range(n):
        s.recv(1 << 17, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    s.setsockopt(socket.SOL_SOCKET, 42, -1)


@pytest.mark.parametrize("typ", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_an_empty_head_is_seen_and_kept(typ):
    """A queue headed by an empty message, peeked at before: `waiting` sees it (FIONREAD says 0),
    peek_messages keeps it in its place, twice alike (its own peek marks it too)."""
    a, b = socket.socketpair(socket.AF_UNIX, typ)
    for m in (b"", b"one", b"y" * 3000):
        a.send(m)
    _peeked(b, 1)
    d = types.SimpleNamespace(where="fd 13")
    assert unix_queue.waiting(b, b.fileno())
    first = unix_queue.peek_messages(b, d, 0)
    assert first == ["", "b25l", first[2]] and len(first) == 3
    assert unix_queue.peek_messages(b, d, 0) == first
    assert [len(m) for m in _drain(b)] == [0, 3, 3000]


def test_waiting_sees_no_queue():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    assert not unix_queue.waiting(b, b.fileno())


def test_a_peeked_empty_message_in_the_middle_is_refused():
    """A middle empty message peeked at before is passed over by every peek at an offset: the pair's
    send buffer memory tells (SIOCOUTQ of the other end), and the dump refuses rather than lose it."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for m in (b"first", b"", b"last"):
        a.send(m)
    _peeked(b, 3)
    d = types.SimpleNamespace(where="fd 11", scratch={})
    msgs = unix_queue.peek_messages(b, d, 0)
    assert len(msgs) == 2
    unix_pair._hidden(d, "pair", 1, b.type, msgs, unix_queue.outq(b.fileno()))
    with pytest.raises(FdError, match="messages queued that a peek does not show"):
        unix_pair._hidden(d, "pair", 0, a.type, [], unix_queue.outq(a.fileno()))


@pytest.mark.parametrize("typ", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_a_peeked_empty_message_behind_fds_in_flight_is_refused(typ):
    """The same behind a message carrying fds (SCM_RIGHTS): before session 33 the send buffer
    memory was not compared for a queue with fds in flight (`charged` gave None), and the empty
    message was lost at restore; the fds are not charged to their message, so it is compared."""
    a, b = socket.socketpair(socket.AF_UNIX, typ)
    r, w = os.pipe()
    socket.send_fds(a, [b"with fds"], [r, w])
    for m in (b"", b"last"):
        a.send(m)
    os.close(r)
    os.close(w)
    _peeked(b, 3)
    d = types.SimpleNamespace(where="fd 11", scratch={}, pid=os.getpid(), objects={}, mounts=[], elsewhere=[])
    got = []
    real = unix_queue.inflight_entry
    try:
        unix_queue.inflight_entry = lambda d, fd, selves=None: got.append(os.readlink(f"/proc/self/fd/{fd}")) or {}
        msgs = unix_queue.peek_messages(b, d, 2)
    finally:
        unix_queue.inflight_entry = real
    assert len(msgs) == 2 and len(got) == 2 and all(t.startswith("pipe:") for t in got), (msgs, got)
    unix_pair._hidden(d, "pair", 1, b.type, msgs, unix_queue.outq(b.fileno()))
    with pytest.raises(FdError, match="messages queued that a peek does not show"):
        unix_pair._hidden(d, "pair", 0, a.type, [], unix_queue.outq(a.fileno()))


def test_a_queue_with_fds_in_flight_and_no_hidden_message_is_not_refused():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    a.send(b"")
    socket.send_fds(a, [b"with fds"], [r])
    a.send(b"x" * 70000)
    os.close(r)
    os.close(w)
    d = types.SimpleNamespace(where="fd 11", scratch={})
    real = unix_queue.inflight_entry
    try:
        unix_queue.inflight_entry = lambda d, fd, selves=None: {}
        msgs = unix_queue.peek_messages(b, d, 1)
    finally:
        unix_queue.inflight_entry = real
    assert len(msgs) == 3, msgs
    unix_pair._hidden(d, "pair", 1, b.type, msgs, unix_queue.outq(b.fileno()))
    unix_pair._hidden(d, "pair", 0, a.type, [], unix_queue.outq(a.fileno()))


def test_a_whole_queue_is_not_refused():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for m in (b"", b"x" * 70000, b"z"):
        a.send(m)
    d = types.SimpleNamespace(where="fd 11", scratch={})
    unix_pair._hidden(d, "pair", 1, b.type, unix_queue.peek_messages(b, d, 0), unix_queue.outq(b.fileno()))
    unix_pair._hidden(d, "pair", 0, a.type, [], unix_queue.outq(a.fileno()))


PAIRS = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
for m in (b"", b"dgram one", b"y" * 3000):
    a.send(m)
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
for m in (b"", b"first", b"x" * 70000):
    c.send(m)
d.setsockopt(socket.SOL_SOCKET, 42, 0); d.recv(10, socket.MSG_PEEK); d.setsockopt(socket.SOL_SOCKET, 42, -1)
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); os.dup2(c.fileno(), 12); os.dup2(d.fileno(), 13)
for x in (a, b, c, d): x.close()
""")


def test_pairs_with_empty_messages_come_back_whole(case):
    """A datagram pair whose first message is empty came back with none (its FIONREAD is 0), a
    seqpacket pair whose empty head was peeked at came back without it."""
    state = case.roundtrip(PAIRS)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 11)) as b:
        assert [len(m) for m in _drain(b)] == [0, 9, 3000]
    with socket.socket(fileno=grab_fd(state.pid, 13)) as d:
        assert [len(m) for m in _drain(d)] == [0, 5, 70000]


MIDDLE = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
for m in (b"first", b"", b"last"):
    a.send(m)
b.setsockopt(socket.SOL_SOCKET, 42, 0)
for _ in range(3):
    b.recv(10, socket.MSG_PEEK)
b.setsockopt(socket.SOL_SOCKET, 42, -1)
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); a.close(); b.close()
""")


def test_a_peeked_empty_message_refused_and_the_tree_runs_on(case):
    """Refused naming the socket; the tree keeps running with its queue as it was."""
    from enginecase import CRError
    pid = case.start(MIDDLE)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"fd 1[01] \(socket:\[\d+\]\): a datagram socket pair with messages queued that a peek does "
                     r"not show", str(err.value)), err.value
    os.kill(pid, 0)
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] != "T"
    with socket.socket(fileno=grab_fd(pid, 11)) as b:
        assert [len(m) for m in _drain(b)] == [5, 0, 4]


PENDING = py_hold("""
import socket
gone = b"\\0zdtm-pend-" + os.urandom(4).hex().encode()
sp = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); sp.bind(gone); sp.listen(8)
q = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); q.connect(gone)
for m in (b"pkt1", b"", b"pkt3"):
    q.send(m)
g = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); g.connect(gone)
for m in (b"", b"after an empty one"):
    g.send(m)
g.close()
os.dup2(sp.fileno(), 10); os.dup2(q.fileno(), 11)
for x in (sp, q): x.close()
""").replace("exec python3", "exec unshare --net python3", 1)


def test_pending_seqpacket_connections_keep_their_empty_messages(case):
    """Connections a seqpacket listener has not accepted, one whose client the tree holds and one
    whose client is gone, with empty messages among theirs: accepted after restore, each gives all."""
    state = case.roundtrip(PENDING)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as sp:
        sp.settimeout(5)
        got = []
        for _ in range(2):
            c, _ = sp.accept()
            with c:
                got.append(_drain(c, 3))
    assert sorted(got) == sorted([[b"pkt1", b"", b"pkt3"], [b"", b"after an empty one", b""]]), got


PASSCRED = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
a.send(b"READY=1")
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); a.close(); b.close()
""")


def test_queued_credentials_refused_before_the_stop(case):
    """A datagram pair whose reader set SO_PASSCRED (sd_notify's, journald's) with a message
    queued: each carries its sender's credentials, which restore cannot give it. Refused naming
    SO_PASSCRED (it said "over 128 KiB, or with other ancillary data than fds", after the stop),
    before the tree is stopped."""
    from enginecase import STOP_WATCH, CRError, was_stopped
    pid = case.start(STOP_WATCH + PASSCRED)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"fd 11 \(socket:\[\d+\]\): messages queued on a socket whose reader set SO_PASSCRED",
                     str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


FDS_HEAD = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe(); os.write(w, b"through the pipe")
socket.send_fds(a, [b""], [r])
a.send(b"after")
os.close(r)
os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11); os.dup2(w, 12); a.close(); b.close(); os.close(w)
""")


def test_an_empty_message_carrying_an_fd_heads_a_queue(case):
    """An empty message that carries a pipe's read end (SCM_RIGHTS) heads a datagram pair's queue:
    it comes back first, with the fd, the next message after it."""
    state = case.roundtrip(FDS_HEAD)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 11)) as b:
        data, fds, _flags, _addr = socket.recv_fds(b, 100, 4, socket.MSG_DONTWAIT)
        assert data == b"" and len(fds) == 1
        assert os.read(fds[0], 100) == b"through the pipe"
        os.close(fds[0])
        assert b.recv(100, socket.MSG_DONTWAIT) == b"after"


BACKLOG = py_hold("""
import socket
name = b"\\0zdtm-sink-" + os.urandom(4).hex().encode()
sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); sink.bind(name)
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
u.sendto(b"", name); u.sendto(b"READY=1", name)
os.dup2(sink.fileno(), 10); sink.close()
""").replace("exec python3", "exec unshare --net python3", 1)


def test_a_named_datagram_socket_whose_first_datagram_is_empty_keeps_its_backlog(case):
    """A bound datagram socket (an sd_notify or syslog socket) whose first datagram is empty: its
    FIONREAD is 0, so dump took it for one with nothing queued and its backlog was lost."""
    state = case.roundtrip(BACKLOG)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as s:
        assert _drain(s) == [b"", b"READY=1"]


DANGLING = py_hold("""
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.send(b""); a.send(b"last words"); a.close()
os.dup2(b.fileno(), 10); b.close()
""")


def test_a_datagram_socket_whose_peer_is_gone_keeps_an_empty_first_message(case):
    """The survivor of a datagram pair whose peer closed after sending an empty datagram and another:
    both come back (FIONREAD 0 made dump take its queue for empty)."""
    state = case.roundtrip(DANGLING)[-1]
    with socket.socket(fileno=grab_fd(state.pid, 10)) as s:
        assert _drain(s) == [b"", b"last words"]
