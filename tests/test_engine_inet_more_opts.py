"""Socket options of real programs that the snapshot does not compare, read on the restored
sockets: each set to a value not its default before C/R must read the same after it (a restored
socket with its default is a silent loss: timestamps chrony asks for, the congestion control a
server picked, multicast TTL and loop, its local port range...)."""

from __future__ import annotations

import socket

import pytest

from tests.enginecase import case, grab_fd  # noqa: F401  (fixture)
from tests.test_engine_inet import _in_netns

# fd: [(level, option, value set, bytes to read or None for an int), ...]
OPTS = {
    10: [(socket.SOL_SOCKET, 35, 1, None),            # SO_TIMESTAMPNS
         (socket.SOL_SOCKET, 37, 0x18, None),         # SO_TIMESTAMPING: SOFTWARE | RX_SOFTWARE
         (socket.IPPROTO_IP, 33, 7, None),            # IP_MULTICAST_TTL
         (socket.IPPROTO_IP, 34, 0, None),            # IP_MULTICAST_LOOP
         (socket.IPPROTO_IP, 49, 0, None),            # IP_MULTICAST_ALL
         (socket.IPPROTO_IP, 20, 1, None),            # IP_RECVORIGDSTADDR
         (socket.IPPROTO_IP, 21, 5, None),            # IP_MINTTL
         (socket.IPPROTO_IP, 51, 20000 | 30000 << 16, None)],   # IP_LOCAL_PORT_RANGE
    11: [(socket.IPPROTO_IPV6, 18, 9, None),          # IPV6_MULTICAST_HOPS
         (socket.IPPROTO_IPV6, 19, 0, None),          # IPV6_MULTICAST_LOOP
         (socket.IPPROTO_IPV6, 66, 1, None),          # IPV6_RECVTCLASS
         (socket.IPPROTO_IPV6, 62, 1, None),          # IPV6_DONTFRAG
         (socket.IPPROTO_IPV6, 74, 1, None),          # IPV6_RECVORIGDSTADDR
         (socket.IPPROTO_IPV6, 70, 0, None)],         # IPV6_AUTOFLOWLABEL
    12: [(socket.IPPROTO_TCP, 13, b"reno", 16),       # TCP_CONGESTION
         (socket.IPPROTO_TCP, 27, 1, None),           # TCP_SAVE_SYN
         (socket.IPPROTO_TCP, 8, 17, None),           # TCP_LINGER2
         (socket.IPPROTO_TCP, 7, 3, None)],           # TCP_SYNCNT
    13: [(socket.IPPROTO_TCP, 13, b"reno", 16),       # TCP_CONGESTION
         (socket.IPPROTO_TCP, 8, 17, None),           # TCP_LINGER2
         (socket.IPPROTO_TCP, 36, 1, None),           # TCP_INQ
         (socket.IPPROTO_TCP, 16, 1, None),           # TCP_THIN_LINEAR_TIMEOUTS
         (socket.IPPROTO_TCP, 37, 250, None)],        # TCP_TX_DELAY (µs)
}

SETUP = """
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 7600))
v = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); v.bind(("::1", 7601))
l = socket.socket(); l.bind(("127.0.0.1", 7602))
c = socket.socket()
for sk, n in ((u, 10), (v, 11), (l, 12), (c, 13)):
    for lvl, opt, val, _n in OPTS[n]:
        sk.setsockopt(lvl, opt, val)
l.listen(4); c.connect(("127.0.0.1", 7602)); a, _ = l.accept()
for sk, n in ((u, 10), (v, 11), (l, 12), (c, 13)):
    os.dup2(sk.fileno(), n)
"""


def _read(pid: int) -> dict:
    out = {}
    for n, opts in OPTS.items():
        with socket.socket(fileno=grab_fd(pid, n)) as s:
            for lvl, opt, _val, size in opts:
                got = s.getsockopt(lvl, opt, size) if size else s.getsockopt(lvl, opt)
                out[(n, lvl, opt)] = got.rstrip(b"\0") if size else got
    return out


def test_options_kept(case):
    pid = case.start(_in_netns("OPTS = " + repr(OPTS) + "\n" + SETUP))
    before = _read(pid)
    for n, opts in OPTS.items():
        for lvl, opt, val, _size in opts:
            assert before[(n, lvl, opt)] == val, f"fd {n} option {lvl}:{opt}: set {val!r}, reads {before[(n, lvl, opt)]!r}"
    after = _read(case.cr(pid))
    lost = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not lost, f"lost at C/R (fd, level, option): (before, after): {lost}"
