"""SO_PRIORITY of a unix socket (a program's, e.g. one that marks its log stream's priority): a
restored socket had the kernel's default, 0, and nothing compared it (found by
tests/test_random_fdtrees.py, seed 12: a stream pair's end with priority 1). Now it is one of the
options dumped and set again (engine/fds/unix_opts.py), and the snapshot shows it."""

from __future__ import annotations

import socket

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

SETUP = py_hold("""
import socket
a, b = socket.socketpair()
a.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 5)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.bind("\\0prio"); d.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, 2)
for s, n in ((a, 10), (b, 11), (d, 12)):
    os.dup2(s.fileno(), n); s.close()
""")


def test_unix_socket_priority_kept(case):
    before, after = case.roundtrip(SETUP)
    assert any(line.startswith("10: ") and "priority:5" in line for line in before.root.fds), before.root.fds
    for n, want in ((10, 5), (11, 0), (12, 2)):
        with socket.socket(fileno=grab_fd(after.pid, n)) as s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY) == want, f"fd {n}"
