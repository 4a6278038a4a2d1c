"""What a restored TCP connection sends with: the options a program set that the snapshot did not
compare (TCP_NOTSENT_LOWAT: an HTTP/2 server's, kept now: engine/fds/inet_opts.py) and its segment
size (TCP_MAXSEG outside repair mode, mss_cache): the connect in repair mode computed it from the
default clamp before TCPOPT_MSS was given, and nothing computed it again, so a connection over lo
came back sending 524-byte segments (engine/fds/inet_tcp.py `_sync_mss`)."""

from __future__ import annotations

import socket

from tests.enginecase import case, grab_fd  # noqa: F401  (fixture)
from tests.test_engine_inet import _fd, _in_netns

CONN = """
import socket
l = socket.socket(); l.bind(("127.0.0.1", 7080)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7080)); a, _ = l.accept()
a.setsockopt(socket.IPPROTO_TCP, 25, 4096)   # TCP_NOTSENT_LOWAT
c.sendall(b"request"); a.sendall(b"reply")
os.dup2(c.fileno(), 10); os.dup2(a.fileno(), 11)
for s in (l, c, a): s.close()
"""


def _talks(pid: int) -> None:
    """The restored pair (fds 10 and 11 of `pid`) reads what was queued and carries 100 kB more."""
    with socket.socket(fileno=grab_fd(pid, 10)) as c, socket.socket(fileno=grab_fd(pid, 11)) as a:
        c.settimeout(10); a.settimeout(10)
        assert c.recv(100) == b"reply" and a.recv(100) == b"request"
        a.sendall(b"x" * 100000)
        got = b""
        while len(got) < 100000:
            got += c.recv(1 << 17)
        assert got == b"x" * 100000


def test_notsent_lowat_and_segment_size_kept(case):
    before, after = case.roundtrip(_in_netns(CONN))
    assert "notsent_lowat:4096" in _fd(before, 11) and "notsent_lowat:4096" in _fd(after, 11), _fd(after, 11)
    for n in (10, 11):
        with socket.socket(fileno=grab_fd(after.pid, n)) as s:
            mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
            assert mss > 536, f"fd {n}: segments of {mss} bytes over lo (the default clamp's)"
    _talks(after.pid)


CONN6 = """
import socket
l = socket.socket(socket.AF_INET6); l.bind(("::1", 7081)); l.listen()
c = socket.socket(socket.AF_INET6); c.connect(("::1", 7081)); a, _ = l.accept()
c.sendall(b"request"); a.sendall(b"reply")
os.dup2(c.fileno(), 10); os.dup2(a.fileno(), 11)
for s in (l, c, a): s.close()
"""


def test_ipv6_segment_size_kept(case):
    """IPv6: emptying IPV6_HOPOPTS computes nothing (no options object: the kernel syncs the segment
    size only when one is set), so a connection over ::1 came back sending 1208-byte segments (the
    IPv6 minimum MTU's), not 32 KiB ones."""
    before, after = case.roundtrip(_in_netns(CONN6))
    for n in (10, 11):
        with socket.socket(fileno=grab_fd(after.pid, n)) as s:
            mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        assert mss > 4096, f"fd {n}: segments of {mss} bytes over ::1 (its MTU is 64 KiB; live: 32 KiB)"
    _talks(after.pid)
