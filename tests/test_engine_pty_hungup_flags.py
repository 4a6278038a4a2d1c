"""A pty slave whose master was closed (hung up) keeps its status flags: one got from openpty
(glibc's TIOCGPTPEER, no O_LARGEFILE) came back opened by its path, with O_LARGEFILE (open(2) adds
it on 64-bit, F_SETFL cannot take it off): flags 2 -> 100002 (found by tests/test_random_fdtrees.py,
seeds 47, 64 and 95). Restore now gets a hung-up slave as a live one, by how its flags say."""

from __future__ import annotations

import re

from enginecase import case, py_hold  # noqa: F401  (fixture)

SETUP = "mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts; ln -s pts/ptmx /dev/ptmx\n" \
    + py_hold("""
m, s = os.openpty()
p = os.open(os.ttyname(s), os.O_RDWR | os.O_NOCTTY)
os.dup2(s, 10); os.dup2(p, 11)
for fd in (m, s, p):
    os.close(fd)
""")


def _flags(state, n: int) -> int:
    line = next(x for x in state.root.fds if x.startswith(f"{n}: "))
    assert "hung-up" in line, line
    return int(re.search(r"flags=(\d+)", line)[1], 8)


def test_hung_up_slave_keeps_its_flags(case):
    before, after = case.roundtrip(SETUP)
    assert not _flags(before, 10) & 0o100000 and _flags(before, 11) & 0o100000
    assert (_flags(after, 10), _flags(after, 11)) == (_flags(before, 10), _flags(before, 11))
