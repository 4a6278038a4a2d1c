"""An edge-triggered epoll target (EPOLLET) whose file is ready but whose edge the program took
reports nothing until the file changes. Restore registered it again, and epoll_ctl queues a ready
file: the restored epoll woke its program at once with an event the program had taken already
(engine/fds/epoll.py `quiet`)."""

from __future__ import annotations

import os
import select

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

_EDGES = py_hold("""
import select
r, w = os.pipe(); os.write(w, b"for the edge")
r2, w2 = os.pipe(); os.write(w2, b"untaken")
et = select.epoll(); et.register(r, select.EPOLLIN | select.EPOLLET)
assert et.poll(0) == [(r, select.EPOLLIN)]   # (its edge taken)
fresh = select.epoll(); fresh.register(r2, select.EPOLLIN | select.EPOLLET)   # (not taken)
for x, n in ((r, 10), (w, 11), (r2, 12), (w2, 13), (et.fileno(), 20), (fresh.fileno(), 21)):
    os.dup2(x, n)
""")


def _ready(pid: int, n: int) -> list:
    """What epoll fd `n` of `pid` reports now (its events taken, as its program's epoll_wait would)."""
    ep = select.epoll.fromfd(grab_fd(pid, n))   # (it owns the fd)
    try:
        return sorted(ev for _fd, ev in ep.poll(0))
    finally:
        ep.close()


def test_taken_edge_stays_taken(case):
    """After C/R the epoll whose edge was taken reports nothing, until more comes to the pipe; the one
    whose edge was not taken reports it. (Not kept: a taken edge in an epoll with another target to
    report, which a poll of the epoll cannot tell apart.)"""
    pid = case.start(_EDGES)
    after = case.cr(pid)
    assert _ready(after, 20) == [], "an edge the program had taken was reported again"
    assert _ready(after, 21) == [select.EPOLLIN]
    w = grab_fd(after, 11)
    try:
        os.write(w, b"more")
    finally:
        os.close(w)
    assert _ready(after, 20) == [select.EPOLLIN], "the edge-triggered target no longer reports"
