"""SO_BUF_LOCK (CRIU's sock_opts02): which of an inet socket's buffer sizes are the program's comes
back as it was, also a lock cleared after a size was set (setting a size sets its lock); before,
it was neither kept nor compared."""

from __future__ import annotations

from tests.enginecase import case, py_hold  # noqa: F401  (fixture)

_SETUP = """
import socket
for n, (lock, size) in enumerate(((2, None), (1, None), (0, "snd"), (3, "rcv"))):
    s = socket.socket()
    if size:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF if size == "snd" else socket.SO_RCVBUF, 16384)
    s.setsockopt(socket.SOL_SOCKET, 72, lock)   # SO_BUF_LOCK
    os.dup2(s.fileno(), 10 + n)
"""


def test_buffer_locks_restored(case):
    """Four TCP sockets in the tree's network namespace: receive lock alone, send lock alone, a send
    size whose lock was cleared, both locks with a receive size: each fd's options agree after restore."""
    hold = py_hold(_SETUP)
    setup = "exec unshare -n " + hold[len("exec "):]
    before, after = case.roundtrip(setup)
    fds = [line for line in before.snap.procs[0].fds if line.split(":")[0] in ("10", "11", "12", "13")]
    assert len(fds) == 4 and all("buf_lock:" in line for line in fds), fds
    assert "buf_lock:2," in fds[0] and "buf_lock:0," in fds[2], fds
    assert sorted(after.snap.procs[0].fds) == sorted(before.snap.procs[0].fds)
