"""epoll targets registered under an fd number that was closed since, the file still held at another
number (CRIU's epoll and epoll01): registered again under the old number (it was refused: "is no
longer open at that number"); several files registered under one number each find their own."""

from __future__ import annotations

from enginecase import case, py_hold  # noqa: F401  (fixture)

SETUP = py_hold("""
import select
ep = select.epoll()
keep = []
for i in range(3):
    r, w = os.pipe(); keep += [r, w]
    os.dup2(r, 60)
    ep.register(60, select.EPOLLIN | select.EPOLLOUT)   # three files, each once fd 60
    os.close(60)
os.write(keep[3], b"x")                                 # the second pipe has data: EPOLLIN ready
os.dup2(ep.fileno(), 20)
""")


def test_epoll_targets_closed_at_their_number(case):
    before, after = case.roundtrip(SETUP)      # epoll targets, events, data; what each fd reads
    line = next(f for f in after.root.fds if f.startswith("20: "))
    assert "60" in line, line
