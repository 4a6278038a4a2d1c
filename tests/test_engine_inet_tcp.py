"""TCP connections of a network namespace the tree owns (engine/fds/inet_tcp.py): both ends made
again in repair mode with their sequence numbers, queued bytes, options and FINs (established and
half-closed; a CLOSE_WAIT end with its orphan peer); they carry what was queued and then new data
both ways. A --leave-running dump and a refused one leave them working. Also what waits at the
moment of the dump: a listener's connections not accepted yet (engine/fds/inet_pending.py) and
datagrams on UDP sockets (engine/fds/inet_udp.py)."""

from __future__ import annotations

import os
import re
import socket

import pytest

from tests.enginecase import (CRError, DUMP_EXTERNALS, STOP_WATCH, case, grab_fd, mntcr,  # noqa: F401  (fixture)
                              was_stopped)
from tests.test_engine_inet import _fd, _in_netns

# A client and the server's end of its connection (fds 10, 11), bytes written both ways and not
# read (fd 10 has b"to-client" waiting, fd 11 b"to-server"), a listener kept at fd 12; the same over
# ::1 at fds 13, 14; a connection with the peer's receive buffer full (bytes left unsent) at 15, 16.
CONNS = """
import socket
def pair(fam, host, port, lfd, cfd, afd):
    l = socket.socket(fam); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind((host, port)); l.listen()
    c = socket.socket(fam); c.connect((host, port)); a, _ = l.accept()
    c.sendall(b"to-server"); a.sendall(b"to-client")
    os.dup2(c.fileno(), cfd); os.dup2(a.fileno(), afd)
    if lfd: os.dup2(l.fileno(), lfd)
    for s in (l, c, a): s.close()
pair(socket.AF_INET, "127.0.0.1", 7000, 12, 10, 11)
pair(socket.AF_INET6, "::1", 7001, None, 13, 14)
import time
l = socket.socket(); l.bind(("127.0.0.1", 7002)); l.listen()
c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096); c.connect(("127.0.0.1", 7002))
a, _ = l.accept(); a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
c.setblocking(False)
sent = 0
try:
    while True:
        sent += c.send(bytes([sent % 251]) * 1000)
except BlockingIOError:
    pass
c.setblocking(True)
open("/run/.sent", "w").write(str(sent))
os.dup2(c.fileno(), 15); os.dup2(a.fileno(), 16)
for s in (l, c, a): s.close()
"""


def _talk(pid: int) -> None:
    """The connections of CONNS carry their queued bytes, then new data both ways."""
    socks = {n: socket.socket(fileno=grab_fd(pid, n)) for n in (10, 11, 13, 14, 15, 16)}
    try:
        for s in socks.values():
            s.settimeout(10)
        for c, a in ((10, 11), (13, 14)):
            assert socks[c].recv(100) == b"to-client"
            assert socks[a].recv(100) == b"to-server"
            socks[c].sendall(b"more-to-server")
            socks[a].sendall(b"more-to-client")
            assert socks[a].recv(100) == b"more-to-server"
            assert socks[c].recv(100) == b"more-to-client"
        with open(f"/proc/{pid}/root/run/.sent") as f:
            sent = int(f.read())
        got = b""
        while len(got) < sent:   # (the queued bytes, those that were sent and those that were not)
            got += socks[16].recv(1 << 16)
        assert got == b"".join(bytes([i % 251]) * 1000 for i in range(0, sent, 1000))[:sent]
        socks[16].sendall(b"back")
        assert socks[15].recv(10) == b"back"
    finally:
        for s in socks.values():
            s.close()


def test_connections_kept(case):
    """Connections over 127.0.0.1 and ::1 with unread bytes both ways, and one whose sender had
    bytes it could not send yet: after C/R the same ends, state and unread bytes; reads give the
    queued bytes, then new data flows both ways."""
    before, after = case.roundtrip(_in_netns(CONNS))
    for n, what in ((10, r"inet tcp name=127\.0\.0\.1:\d+ state=ESTABLISHED peer=127\.0\.0\.1:7000 inq=9"),
                    (11, r"inet tcp name=127\.0\.0\.1:7000 state=ESTABLISHED peer=127\.0\.0\.1:\d+ inq=9"),
                    (13, r"inet6 tcp name=::1:\d+ state=ESTABLISHED peer=::1:7001 inq=9"),
                    (12, r"inet tcp name=127\.0\.0\.1:7000 state=LISTEN")):
        assert re.search(what, _fd(after, n)), _fd(after, n)
    assert "reuseaddr:1" in _fd(after, 12) and "reuseaddr:1" in _fd(after, 11)
    _talk(after.pid)


def test_leave_running_keeps_connections(case):
    """A --leave-running dump takes the sockets out of repair mode: the tree's connections work on."""
    pid = case.start(_in_netns(CONNS))
    case.dump(pid, case.new_images_dir(), extra=("--leave-running",))
    _talk(pid)


def test_refused_dump_keeps_connections(case, tmp_path):
    """A dump that fails once the tree is stopped (its images directory, a 40 KiB tmpfs, holds the files but not the queued bytes)
    leaves the connections working."""
    pid = case.start(STOP_WATCH + _in_netns(CONNS))
    full = str(tmp_path / "full")
    img = f"{full}/images"
    # (mounted in a private mount namespace of the dumper's own, never the host's)
    small = f"mkdir -p {full} && mount -t tmpfs -o size=40k tmpfs {full} && exec \"$@\""
    r = mntcr("dump", "-t", str(pid), "-D", img, *DUMP_EXTERNALS,
              wrap=("unshare", "-m", "--propagation", "private", "sh", "-c", small, "-"))
    assert r.returncode != 0 and "No space left" in r.stderr, r.stderr
    assert was_stopped(pid), "the dump failed before the stop: not the case this tests"
    _talk(pid)


@pytest.mark.parametrize("body,why", [
    ("""
import socket
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7000)); a, _ = l.accept()
c.send(b"!", socket.MSG_OOB)
""", r"fd \d+ .*urgent data waiting"),
    # (behind ordinary bytes: not at the mark, SIOCATMARK 0; FIONREAD stops at the mark, and dump kept
    # "ab" alone at a sequence number past "!cd", which were lost)
    ("""
import socket
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7000)); a, _ = l.accept()
c.send(b"ab"); c.send(b"!", socket.MSG_OOB); c.send(b"cd")
""", r"fd \d+ .*urgent data waiting"),
])
def test_refused_before_stop(case, body, why):
    """A connection with urgent data: refused with one line naming the fd before the stop."""
    pid = case.start(STOP_WATCH + _in_netns(body))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(why, str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_urgent_byte_read_out_of_band_refused(case):
    """The urgent byte read out of band (recv MSG_OOB) with the bytes around it unread: a read
    passes over its place, FIONREAD stops there; dump kept "ab" alone at a sequence number past
    "cd" (lost). Refused once stopped (nothing tells it before), in one line; the tree keeps running
    with its bytes."""
    pid = case.start(_in_netns("""
import socket
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7000)); a, _ = l.accept()
c.send(b"ab"); c.send(b"!", socket.MSG_OOB); c.send(b"cd")
assert a.recv(1, socket.MSG_OOB) == b"!"
os.dup2(a.fileno(), 10); os.dup2(c.fileno(), 11)
for x in (l, c, a): x.close()
"""))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"fd 10 .*urgent byte \(MSG_OOB\) read out of band: not supported", str(err.value)), err.value
    with socket.socket(fileno=grab_fd(pid, 10)) as a:
        a.settimeout(10)
        got = b""
        while len(got) < 4:
            got += a.recv(10)
        assert got == b"abcd"


def test_syn_sent_kept(case):
    """A client whose connect is under way (SYN_SENT: its listener's queue is full, the SYN dropped;
    dumped and refused before session 26), behind a connection waiting in that queue: after C/R
    (twice) it is SYN_SENT to the same port, the waiting client connected first; once the listener
    accepts that one, the SYN sent again gets through and the client is connected."""
    setup = _in_netns("""
import socket, time
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen(0)
c = socket.socket(); c.connect(("127.0.0.1", 7000))   # (its accept queue full now: the next SYN is dropped)
s = socket.socket(); s.setblocking(False); s.connect_ex(("127.0.0.1", 7000))
while s.getsockopt(socket.SOL_TCP, socket.TCP_INFO, 1)[0] != 2:
    time.sleep(0.05)
os.dup2(s.fileno(), 10); os.dup2(l.fileno(), 11); os.dup2(c.fileno(), 12)
for x in (s, l, c): x.close()
""")
    before, _, after = case.roundtrip(setup, iters=2)
    assert re.search(r"state=SYN_SENT peer=127\.0\.0\.1:7000", _fd(after, 10)), _fd(after, 10)
    assert re.search(r"state=ESTABLISHED peer=127\.0\.0\.1:7000", _fd(after, 12)), _fd(after, 12)
    import select
    with socket.socket(fileno=grab_fd(after.pid, 11)) as l, socket.socket(fileno=grab_fd(after.pid, 10)) as s:
        l.settimeout(30)
        l.accept()[0].close()   # (the waiting client's)
        assert select.select([], [s], [], 60)[1], "the client never connected once the queue had room"
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert s.getpeername() == ("127.0.0.1", 7000)


def test_rootless_container(case):
    """A rootless container's connections (its network namespace owned by a user namespace of its
    own, `unshare -U -r -n`): the dumper and the restorer use TCP_REPAIR with their own
    CAP_NET_ADMIN, which covers the tree's user namespace; the connections carry their bytes."""
    setup = _in_netns(CONNS).replace("exec unshare -n sh -c", "exec unshare -U -r -n sh -c", 1)
    before, after = case.roundtrip(setup)
    assert os.readlink(f"/proc/{after.pid}/ns/user") != os.readlink("/proc/self/ns/user") or \
        any(os.readlink(f"/proc/{p}/ns/user") != os.readlink("/proc/self/ns/user") for p in _pids(after.pid))
    assert re.search(r"state=ESTABLISHED peer=127\.0\.0\.1:7000 inq=9", _fd(after, 10)), _fd(after, 10)
    _talk(_holder(after.pid))


def test_rootless_container_buffers_past_the_limit(case):
    """A rootless container's connection whose send buffer TCP grew past 2 * wmem_max (Debian's
    default wmem_max is 212992, the guest's: a loopback connection grows to ~2.6 MB; here the image
    says 16 MiB, past this host's limit): the stand-in, in the container's user namespace, may not
    use SO_SNDBUFFORCE (CAP_NET_ADMIN of the initial user namespace), so it leaves the size at the
    limit and the restorer sets it once the connection is made; before, the restore failed EPERM."""
    from tests.enginecase import load_manifest, save_manifest
    # (-m: every namespace of the holder its user namespace's, so its stand-in starts there: userns_first)
    setup = _in_netns(CONNS).replace("exec unshare -n sh -c", "exec unshare -U -r -m -n sh -c", 1)
    pid = case.start(setup)
    img = case.new_images_dir()
    case.dump(pid, img)
    doc = load_manifest(img)
    big = 1 << 24
    with open("/proc/sys/net/core/wmem_max") as f:
        assert big > 2 * int(f.read()), "the test needs a size past this host's wmem_max"
    f10 = next(f for p in doc["processes"] for f in p["fds"] if f.get("kind") == "inet" and f["fd"] == 10)
    f10["opts"]["sndbuf"] = big
    save_manifest(img, doc)
    new = case.restore(img)
    holder = _holder(new)
    s = socket.socket(fileno=grab_fd(holder, 10))
    try:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == big
    finally:
        s.close()
    _talk(holder)


def _pids(pid: int) -> list[int]:
    from zdtm.snapshot import tree_pids
    return tree_pids(pid)


def _holder(pid: int) -> int:
    """The process of the tree at `pid` that holds fd 10 (the python holder)."""
    return next(p for p in _pids(pid) if os.path.exists(f"/proc/{p}/fd/10"))


def test_image_tcp_checked(case):
    """The validator bounds a connection's fields: sequence numbers, base64 queues, unsent bytes
    within the send queue, a connection only of a TCP socket with a loopback peer."""
    from tests.enginecase import load_manifest
    from engine import imageformat, image
    pid = case.start(_in_netns(CONNS))
    img = case.new_images_dir()
    case.dump(pid, img)
    imageformat.validate(load_manifest(img))
    for change, text in ((lambda f: f["tcp"].update(send_seq=1 << 32), "send_seq"),
                         (lambda f: f["tcp"].update(recvq="!!!!"), "base64"),
                         (lambda f: f["tcp"].update(unsent=10 ** 6), "unsent than in the send queue"),
                         (lambda f: f["tcp"].update(window=[1, 2]), "window"),
                         (lambda f: f["tcp"].update(wscale=[15, 0]), "wscale"),
                         (lambda f: f["tcp"].pop("mss"), "mss"),
                         (lambda f: f.update(peer="10.0.0.1"), "peer off loopback"),
                         (lambda f: f.update(proto="udp"), "TCP connection"),
                         (lambda f: f.pop("peer_port"), "without its port")):
        doc = load_manifest(img)
        f = next(f for p in doc["processes"] for f in p["fds"] if f.get("kind") == "inet" and "tcp" in f)
        change(f)
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)


DGRAMS = """
import socket
r4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r4.bind(("127.0.0.1", 5353))
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s4.bind(("127.0.0.1", 6000))
for d in (b"one", b"", b"three" * 1000):
    s4.sendto(d, ("127.0.0.1", 5353))
gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); gone.bind(("127.0.0.7", 6001))
gone.sendto(b"from a socket closed since", ("127.0.0.1", 5353)); gone.close()
r6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); r6.bind(("::", 5354))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s6.bind(("::1", 6002))
s6.sendto(b"six", ("::1", 5354)); s4.sendto(b"four on six", ("127.0.0.1", 5354))
# (the program peeked at its queue once, with a peek offset: a second such walk skips the empty one)
r4.setsockopt(socket.SOL_SOCKET, 42, 0)
while True:
    try:
        r4.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        break
r4.setsockopt(socket.SOL_SOCKET, 42, -1)
for n, s in ((10, r4), (11, s4), (12, r6), (13, s6)):
    os.dup2(s.fileno(), n); s.close()
"""


def _datagrams(pid: int) -> None:
    """The datagrams of DGRAMS wait on the tree's sockets, in order, with their senders; its
    sender sockets still send."""
    socks = {n: socket.socket(fileno=grab_fd(pid, n)) for n in (10, 11, 12, 13)}
    try:
        got = [socks[10].recvfrom(1 << 16, socket.MSG_DONTWAIT) for _ in range(4)]
        assert got == [(b"one", ("127.0.0.1", 6000)), (b"", ("127.0.0.1", 6000)),
                       (b"three" * 1000, ("127.0.0.1", 6000)), (b"from a socket closed since", ("127.0.0.7", 6001))]
        got = [socks[12].recvfrom(100, socket.MSG_DONTWAIT)[:2] for _ in range(2)]
        assert [(d, a[:2]) for d, a in got] == [(b"six", ("::1", 6002)), (b"four on six", ("::ffff:127.0.0.1", 6000))]
        with pytest.raises(BlockingIOError):
            socks[10].recv(1, socket.MSG_DONTWAIT)
        socks[11].sendto(b"new", ("127.0.0.1", 5353))
        socks[10].settimeout(5)
        assert socks[10].recvfrom(10) == (b"new", ("127.0.0.1", 6000))
    finally:
        for s in socks.values():
            s.close()


def test_udp_datagrams_kept(case):
    """Datagrams waiting on UDP sockets (IPv4; a dual-stack IPv6 one that got an IPv4 one too), a
    zero-length one the program peeked at, one whose sender closed since: after C/R (twice) the same
    datagrams, in order, with their boundaries and senders; the sender sockets still send."""
    before, _, after = case.roundtrip(_in_netns(DGRAMS), iters=2)
    assert "inq=3" in _fd(before, 10) and "inq=3" in _fd(after, 10), _fd(after, 10)
    _datagrams(after.pid)


def test_udp_datagrams_leave_running(case):
    """A --leave-running dump reads the datagrams and gives them back: the tree finds them all."""
    pid = case.start(_in_netns(DGRAMS))
    case.dump(pid, case.new_images_dir(), extra=("--leave-running",))
    _datagrams(pid)


WAITING = """
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", 7000)); l.listen(8)
c = socket.socket(); c.connect(("127.0.0.1", 7000)); c.sendall(b"hello from the first")
c2 = socket.socket(socket.AF_INET6); c2.connect(("::ffff:127.0.0.1", 7000))
for n, s in ((10, l), (11, c), (12, c2)):
    os.dup2(s.fileno(), n); s.close()
"""


def test_waiting_connections_kept(case):
    """A listener with two connections waiting to be accepted (one whose client sent bytes, one from
    a dual-stack IPv6 client that sent none): after C/R (twice) the listener's queue holds both, in order,
    from the same clients; the first's bytes are there, and data flows both ways once accepted."""
    before, _, after = case.roundtrip(_in_netns(WAITING), iters=2)
    assert re.search(r"state=LISTEN backlog=8 queued=2", _fd(after, 10)), _fd(after, 10)
    assert re.search(r"state=ESTABLISHED peer=127\.0\.0\.1:7000", _fd(after, 11)), _fd(after, 11)
    socks = {n: socket.socket(fileno=grab_fd(after.pid, n)) for n in (10, 11, 12)}
    try:
        for s in socks.values():
            s.settimeout(10)
        a, who = socks[10].accept()
        with a:
            assert who == socks[11].getsockname()
            got = b""
            while len(got) < 20:
                got += a.recv(100)
            assert got == b"hello from the first"
            a.sendall(b"welcome")
            assert socks[11].recv(100) == b"welcome"
        a, who = socks[10].accept()
        with a:
            assert ("::ffff:" + who[0], who[1]) == socks[12].getsockname()[:2]
            socks[12].sendall(b"late")
            assert a.recv(100) == b"late"
    finally:
        for s in socks.values():
            s.close()


def test_waiting_connections_leave_running_refused(case):
    """With --leave-running, dump would take the waiting connections from the tree to read them:
    refused before the stop, naming the listener."""
    pid = case.start(STOP_WATCH + _in_netns(WAITING))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir(), extra=("--leave-running",))
    assert re.search(r"fd 10 .*2 connection\(s\) waiting to be accepted.*--leave-running", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_connection_between_processes_twice(case):
    """A server and its client in two processes (the server forked from the client's parent: a
    local database and the program using it), bytes waiting both ways; C/R twice (the restored
    connection is dumped again): the bytes are there, then new data flows."""
    setup = _in_netns("""
import socket
l = socket.socket(); l.bind(("127.0.0.1", 6379)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 6379)); a, _ = l.accept()
c.sendall(b"PING"); a.sendall(b"+PONG")
if os.fork() == 0:
    os.dup2(a.fileno(), 11); os.dup2(l.fileno(), 12)
else:
    os.dup2(c.fileno(), 10)
for s in (l, c, a): s.close()
""")
    before, _, after = case.roundtrip(setup, iters=2)
    from zdtm.snapshot import tree_pids
    server = next(p for p in tree_pids(after.pid) if os.path.exists(f"/proc/{p}/fd/11"))
    client = next(p for p in tree_pids(after.pid) if os.path.exists(f"/proc/{p}/fd/10"))
    with socket.socket(fileno=grab_fd(client, 10)) as c, socket.socket(fileno=grab_fd(server, 11)) as a:
        c.settimeout(10)
        a.settimeout(10)
        assert a.recv(100) == b"PING" and c.recv(100) == b"+PONG"
        c.sendall(b"GET k")
        assert a.recv(100) == b"GET k"
        a.sendall(b"$-1")
        assert c.recv(100) == b"$-1"


HALF = """
import socket
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7000)); a, _ = l.accept()
c.sendall(b"request"); c.shutdown(socket.SHUT_WR)   # (a client that says it is done: the server reads an end)
a.sendall(b"partial answer")
l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 7001)); l6.listen()
c6 = socket.socket(socket.AF_INET6); c6.connect(("::1", 7001)); a6, _ = l6.accept()
a6.shutdown(socket.SHUT_WR)   # (the server half-closed, the client has not read its end yet)
for n, s in ((10, c), (11, a), (12, c6), (13, a6)):
    os.dup2(s.fileno(), n)
for s in (l, c, a, l6, c6, a6): s.close()
"""


def test_half_closed_kept(case):
    """Half-closed connections (a client shut down its sending side, FIN_WAIT2, its server in
    CLOSE_WAIT with the request and the end waiting; over ::1 the server's side): after C/R (twice)
    the same states; the reader gets the bytes, then the end; the other way still carries data."""
    before, _, after = case.roundtrip(_in_netns(HALF), iters=2)
    for n, state in ((10, "FIN_WAIT2"), (11, "CLOSE_WAIT"), (12, "CLOSE_WAIT"), (13, "FIN_WAIT2")):
        assert f"state={state} " in _fd(after, n), _fd(after, n)
    socks = {n: socket.socket(fileno=grab_fd(after.pid, n)) for n in (10, 11, 12, 13)}
    try:
        for s in socks.values():
            s.settimeout(10)
        assert socks[11].recv(100) == b"request" and socks[11].recv(100) == b""
        assert socks[10].recv(100) == b"partial answer"
        socks[11].sendall(b", the rest")
        assert socks[10].recv(100) == b", the rest"
        with pytest.raises(BrokenPipeError):
            socks[10].send(b"more")
        assert socks[12].recv(100) == b""
        socks[12].sendall(b"still heard")
        assert socks[13].recv(100) == b"still heard"
    finally:
        for s in socks.values():
            s.close()


def test_image_queues_checked(case):
    """The validator bounds waiting datagrams (a loopback sender of the socket's family, base64),
    a listener's count of waiting connections, a waiting client's bytes, a half-closed state, what
    only an ended connection says (whether it holds its port)."""
    from tests.enginecase import load_manifest
    from engine import imageformat, image
    imgs = {}
    for name, setup in (("dgrams", DGRAMS), ("waiting", WAITING), ("half", HALF)):
        pid = case.start(_in_netns(setup))
        imgs[name] = case.new_images_dir()
        case.dump(pid, imgs[name])
        imageformat.validate(load_manifest(imgs[name]))
    for name, has, change, text in (
            ("dgrams", "dgrams", lambda f: f["dgrams"][0].update({"from": "10.0.0.1"}), "off loopback"),
            ("dgrams", "dgrams", lambda f: f["dgrams"][0].update({"from": "::1"}), "of another family"),
            ("dgrams", "dgrams", lambda f: f["dgrams"][0].update({"data": "@@@@"}), "base64"),
            ("dgrams", "dgrams", lambda f: f.update(proto="tcp"), "datagrams"),
            ("waiting", "queued", lambda f: f.update(queued=0), "queued"),
            ("waiting", "queued", lambda f: f.pop("listen"), "listener"),
            ("waiting", "pending", lambda f: f["pending"].update(sent="!"), "base64"),
            ("waiting", "pending", lambda f: f.update(listen=4), "'tcp' or 'pending'"),
            ("half", "tcp", lambda f: f["tcp"].update(state="TIME_WAIT"), "must be one of"),
            ("half", "tcp", lambda f: f["tcp"].update(fin_unsent=True), "FIN sent and not acknowledged"),
            ("half", "tcp", lambda f: f["tcp"].update(port_held=True), "only an ended connection")):
        doc = load_manifest(imgs[name])
        f = next(f for p in doc["processes"] for f in p["fds"] if f.get("kind") == "inet" and has in f
                 and (has != "tcp" or f["tcp"].get("state") == "FIN_WAIT2"))
        change(f)
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)


def test_close_wait_alone(case):
    """A server's connection whose client went away (closed: an orphan the tree does not hold),
    the request unread: after C/R (twice) the server's end is CLOSE_WAIT; it reads the request,
    then the end; its answer meets a reset, as it would have from the orphan."""
    setup = _in_netns("""
import socket
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7000)); a, _ = l.accept()
c.sendall(b"GET /"); c.close()
os.dup2(a.fileno(), 10); os.dup2(l.fileno(), 11)
for s in (l, a): s.close()
""")
    before, _, after = case.roundtrip(setup, iters=2)
    assert re.search(r"state=CLOSE_WAIT peer=127\.0\.0\.1:\d+ inq=5", _fd(after, 10)), _fd(after, 10)
    import time
    with socket.socket(fileno=grab_fd(after.pid, 10)) as a:
        a.settimeout(10)
        assert a.recv(100) == b"GET /" and a.recv(100) == b""
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(100):
                a.send(b"200 OK")
                time.sleep(0.05)


def test_peek_off_before_linux_6_9():
    """TCP takes a peek offset from Linux 6.9; before, getsockopt(SO_PEEK_OFF) fails with EOPNOTSUPP
    and dump refused every TCP connection with "inet: Operation not supported" (the 5.10 VM row,
    session 20): that means no offset; another error still propagates."""
    import errno as errno_mod
    import socket as socket_mod
    from engine.fds import inet_tcp as tcp

    class Old:
        def __init__(self, err):
            self.err = err

        def getsockopt(self, level, opt):
            assert (level, opt) == (socket_mod.SOL_SOCKET, tcp.SO_PEEK_OFF)
            raise OSError(self.err, "simulated")

    assert tcp.peek_off(Old(errno_mod.EOPNOTSUPP)) == -1
    with pytest.raises(OSError):
        tcp.peek_off(Old(errno_mod.EBADF))
    with socket_mod.socket() as s:   # this kernel's own answer for a fresh TCP socket
        assert tcp.peek_off(s) == -1


SMALL = """
import socket
l = socket.socket(); l.bind(("127.0.0.1", 7003)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7003)); a, _ = l.accept()
for s in (c, a):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 18)   # (no autotuning: a test that sleeps)
    s.setblocking(False)
    try:
        while True:
            s.send(b"zdtm test packet")
    except BlockingIOError:
        pass
    s.setblocking(True)
os.dup2(c.fileno(), 10); os.dup2(a.fileno(), 11)
for s in (l, c, a): s.close()
"""


def test_full_queues_of_small_writes(case):
    """Both ends of a connection wrote 17-byte chunks until their send buffers were full (CRIU's
    socket-tcp-closing without the FINs): the receivers' queues hold many small packets, whose
    memory a restored queue (written at once in repair mode) does not take, so a restored receiver
    opens its window and more bytes move from the sender's queue into its own. The bytes each end
    has not read, in both queues, stay the same (what the snapshot compares)."""
    before, after = case.roundtrip(_in_netns(SMALL))
    for n in (10, 11):
        unread = int(re.search(r" inq=(\d+)", _fd(before, n))[1])
        assert unread > 300000 and f" inq={unread} " in _fd(after, n), (_fd(before, n), _fd(after, n))


# Connections that ended (CLOSE), each end held on: a client and its server that both shut down
# their sending side (FINs both ways), bytes unread at each end (fds 10, 11); the same over ::1 (12,
# 13); a client whose server reset the connection after sending it bytes, the error read since
# (SO_ERROR), the bytes not (14); a server's listener (15) and its end of a connection whose client
# closed, the request unread, that the server shut down since (16: its port the listener's).
ENDED = """
import socket, struct, time
def ended(fam, host, port, cfd, afd):
    l = socket.socket(fam); l.bind((host, port)); l.listen()
    c = socket.socket(fam); c.connect((host, port)); a, _ = l.accept(); l.close()
    c.sendall(b"request"); c.shutdown(socket.SHUT_WR)
    a.sendall(b"answer"); a.shutdown(socket.SHUT_WR)
    os.dup2(c.fileno(), cfd); os.dup2(a.fileno(), afd); c.close(); a.close()
ended(socket.AF_INET, "127.0.0.1", 7000, 10, 11)
ended(socket.AF_INET6, "::1", 7001, 12, 13)
l = socket.socket(); l.bind(("127.0.0.1", 7002)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7002)); a, _ = l.accept(); l.close()
a.sendall(b"bye"); time.sleep(0.2)
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); a.close()   # (an RST)
while c.getsockopt(socket.SOL_TCP, socket.TCP_INFO, 1)[0] != 7:
    time.sleep(0.05)
assert c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 104   # (ECONNRESET, read)
os.dup2(c.fileno(), 14); c.close()
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", 7003)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7003)); a, _ = l.accept()
c.sendall(b"GET /"); c.close(); a.shutdown(socket.SHUT_WR)
os.dup2(l.fileno(), 15); os.dup2(a.fileno(), 16); l.close(); a.close()
"""


def test_ended_connections_kept(case):
    """TCP sockets whose connection ended (CLOSE: by FINs both ways, or reset with its error read),
    each with bytes its program has not read, one beside its listener: after C/R (twice) each is
    CLOSE with the same name and peer (SO_PEERNAME), no error waiting, and holds its port no more
    than it did (sock_diag lists one that does); it reads its bytes, then the end; a write is
    refused."""
    before, _, after = case.roundtrip(_in_netns(ENDED), iters=2)
    for n, what in ((10, r"inet tcp name=127\.0\.0\.1:(\d+) state=CLOSE peer=127\.0\.0\.1:7000 inq=6 "),
                    (11, r"inet tcp name=127\.0\.0\.1:7000 state=CLOSE peer=127\.0\.0\.1:\d+ inq=7 "),
                    (12, r"inet6 tcp name=::1:\d+ state=CLOSE peer=::1:7001 inq=6 "),
                    (13, r"inet6 tcp name=::1:7001 state=CLOSE peer=::1:\d+ inq=7 "),
                    (14, r"inet tcp name=127\.0\.0\.1:\d+ state=CLOSE peer=127\.0\.0\.1:7002 inq=3 "),
                    (15, r"inet tcp name=127\.0\.0\.1:7003 state=LISTEN "),
                    (16, r"inet tcp name=127\.0\.0\.1:7003 state=CLOSE peer=127\.0\.0\.1:\d+ inq=5 ")):
        assert re.search(what, _fd(after, n)), _fd(after, n)
    socks = {n: socket.socket(fileno=grab_fd(after.pid, n)) for n in (10, 11, 12, 13, 14, 16)}
    try:
        for n, data in ((10, b"answer"), (11, b"request"), (12, b"answer"), (13, b"request"), (14, b"bye"),
                        (16, b"GET /")):
            assert socks[n].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0, n
            assert socks[n].recv(100) == data and socks[n].recv(100) == b"", n
            with pytest.raises(BrokenPipeError):
                socks[n].send(b"more")
    finally:
        for s in socks.values():
            s.close()


@pytest.mark.parametrize("change,text", [
    (lambda e: e.update(tcp={}), "one of the three"),
    (lambda e: e.update(pending={"order": 0, "sent": ""}), "one of the three"),
    (lambda e: e.update(peer="10.0.0.1"), "off loopback"),
    (lambda e: e.pop("addr") and e.pop("port"), "with an address"),
    (lambda e: e.update(listen=1), "not listening"),
    (lambda e: e.update(proto="udp"), "TCP socket"),
])
def test_syn_sent_entry_checked(change, text):
    """An image's connecting client ('syn_sent') is a TCP socket with a loopback address and peer,
    not listening, and neither 'tcp' nor 'pending' (the validator refuses any other)."""
    from engine import image
    from engine.fds import inet
    entry = {"fd": 10, "flags": 2, "kind": "inet", "family": "inet", "proto": "tcp", "addr": "127.0.0.1",
             "port": 40000, "peer": "127.0.0.1", "peer_port": 7000, "syn_sent": True, "obj": "net-0", "opts": {}}
    inet._check(dict(entry), "fd 10")   # (as dump writes it)
    change(entry)
    with pytest.raises(image.ImageError, match=text):
        inet._check(entry, "fd 10")
