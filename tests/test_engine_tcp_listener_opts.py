"""Options a program gives a TCP listener (or a socket not connected yet) that only such a socket
shows: TCP_MAXSEG (the segment size its accepted connections announce and use: the user's,
read back while it listens) and TCP_WINDOW_CLAMP (the receive window its accepted connections
advertise at most). Both were lost at restore, silently (session 34): the snapshot compared
neither. A connection's own values are TCP's (mss_cache, a clamp that autotuning grows): not these."""

from __future__ import annotations

import socket

from tests.enginecase import case, grab_fd  # noqa: F401  (fixture)
from tests.test_engine_inet import _fd, _in_netns

LISTENER = """
import socket
l = socket.socket(); l.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1200)
l.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, 20000)
l.bind(("127.0.0.1", 7090)); l.listen(8)
u = socket.socket(socket.AF_INET6); u.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)
plain = socket.socket(); plain.bind(("127.0.0.1", 7091)); plain.listen(8)
c = socket.socket()   # (a client of the namespace the test connects with)
os.dup2(l.fileno(), 10); os.dup2(u.fileno(), 11); os.dup2(plain.fileno(), 12); os.dup2(c.fileno(), 13)
for s in (l, u, plain, c): s.close()
"""


def _accepted_mss(pid: int) -> tuple[int, int]:
    """The segment size and window clamp of a connection accepted by the listener (fd 10 of `pid`)
    from its namespace's client (fd 13)."""
    with socket.socket(fileno=grab_fd(pid, 10)) as l, socket.socket(fileno=grab_fd(pid, 13)) as c:
        c.connect(("127.0.0.1", 7090))
        a, _ = l.accept()
        with a:
            return (a.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
                    a.getsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP))


def test_listener_segment_size_and_window_clamp_kept(case):
    """The listener's and the unconnected socket's values come back (the snapshot shows them), and a
    connection accepted after restore uses them."""
    before, after = case.roundtrip(_in_netns(LISTENER))
    for n, want in ((10, ("maxseg:1200", "window_clamp:20000")), (11, ("maxseg:1000",)), (12, ("maxseg:536",))):
        for w in want:
            assert w in _fd(before, n) and w in _fd(after, n), (n, _fd(after, n))
    assert "window_clamp:0" in _fd(after, 12), _fd(after, 12)
    mss, clamp = _accepted_mss(after.pid)
    assert mss <= 1200 - 12 and clamp <= 20000, (mss, clamp)
