"""pty slaves held open after their master was closed (CRIU's pty04): the kernel hung them up and
removed their node. Restore opens them while a master of the same number is open, then closes it:
they are hung up again, on the same devpts and number, and the number is free once more."""

from __future__ import annotations

import errno
import os

import pytest

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

SETUP = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
""" + py_hold("""
import fcntl, struct
keep = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)   # (number 0 stays a live pair)
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))
s = os.open("/dev/pts/1", os.O_RDWR | os.O_NOCTTY); os.close(m)
os.dup2(keep, 10); os.dup2(s, 11); os.dup2(s, 12); os.close(keep); os.close(s)
""")


def test_hung_up_pty_slaves(case):
    check = "ls -l /proc/1/fd | awk 'NR > 1 && $9 >= 10 {print $9, $11, $12}'; ls /dev/pts"
    before, after = case.roundtrip(SETUP, check=check)
    out = after.snap.check_output
    assert "11 /dev/pts/1 (deleted)" in out and "12 /dev/pts/1 (deleted)" in out, out
    assert "/dev/pts/1\n" not in out and "\n1\n" not in out, out   # (its node is gone again)
    s = grab_fd(after.pid, 11)
    try:
        with pytest.raises(OSError) as err:
            os.write(s, b"x")
        assert err.value.errno == errno.EIO   # (hung up)
    finally:
        os.close(s)
