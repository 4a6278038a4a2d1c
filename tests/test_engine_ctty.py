"""An fd on /dev/tty (5:0, "my controlling terminal") is refused at dump, the tree left running.

CRIU's pty00 holds one: restore reopened /dev/tty in a stand-in, which has no
controlling terminal, and failed with ENXIO after the dump had succeeded.
"""

from __future__ import annotations

import os

import pytest

from enginecase import case, py_hold  # noqa: F401  (fixture)

SETUP = """
mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mknod -m 666 /dev/tty c 5 0
""" + py_hold("""
import fcntl, struct, termios
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
fcntl.ioctl(m, 0x40045431, struct.pack("i", 0))                 # TIOCSPTLCK: unlock
n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"0000"))[0]  # TIOCGPTN
s = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
fcntl.ioctl(s, termios.TIOCSCTTY, 0)                             # pid 1 is a session leader
t = os.open("/dev/tty", os.O_RDWR); os.dup2(t, 10); os.close(t)
""")


def test_dev_tty_is_refused_at_dump_and_the_tree_keeps_running(case, tmp_path):
    pid = case.start(SETUP)
    with pytest.raises(AssertionError) as err:
        case.dump(pid, str(tmp_path / "img"))
    assert "fd 10 (/dev/tty): /dev/tty (5:0) stands for the process's controlling terminal" in str(err.value)
    assert os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "T"
