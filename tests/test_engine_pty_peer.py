"""A pty slave a program got from its master with TIOCGPTPEER (glibc's openpty does so) has no
O_LARGEFILE in its status flags: the kernel adds it on 64-bit to what open(2) opens, not to what the
ioctl opens. Restore opened the slave again by its path and it came back with O_LARGEFILE, which
F_GETFL shows and the runner's snapshot leaves out (engine/fds/pty.py `_open`)."""

from __future__ import annotations

import fcntl
import os

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

O_LARGEFILE = 0o100000

_PEER = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
""" + py_hold("""
import fcntl, struct
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
s = fcntl.ioctl(m, 0x5441, os.O_RDWR | os.O_NOCTTY)
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]
o = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
os.dup2(m, 20); os.dup2(s, 10); os.dup2(o, 11)
for x in (m, s, o): os.close(x)
""")


def _getfl(pid: int, n: int) -> int:
    fd = grab_fd(pid, n)
    try:
        return fcntl.fcntl(fd, fcntl.F_GETFL)
    finally:
        os.close(fd)


def test_slave_by_tiocgptpeer_keeps_its_flags(case):
    """Fd 10 (TIOCGPTPEER: no O_LARGEFILE) and fd 11 (open of /dev/pts/N: O_LARGEFILE, non-blocking)
    come back with the status flags they had, O_LARGEFILE included; the slave still talks to the
    master."""
    pid = case.start(_PEER)
    before = {n: _getfl(pid, n) for n in (10, 11)}
    assert not before[10] & O_LARGEFILE and before[11] & O_LARGEFILE, before
    after_pid = case.cr(pid)
    after = {n: _getfl(after_pid, n) for n in (10, 11)}
    assert after == before, f"F_GETFL before {before}, after {after}"
    m, s = grab_fd(after_pid, 20), grab_fd(after_pid, 10)
    try:
        os.write(s, b"hello\n")
        assert os.read(m, 100).startswith(b"hello")
    finally:
        os.close(m); os.close(s)
