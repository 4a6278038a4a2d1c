"""Findings of session 18's review, each held by a test that fails without its fix."""

from __future__ import annotations

import os

from engine import ctty
from enginecase import STOP_WATCH, case, py_hold  # noqa: F401  (fixture)

# A session leader whose terminal is a pty of the host (its master outside the tree: a shell started
# from a terminal emulator, the host's /dev/pts bound in), holding the slave as an fd and /dev/tty.
_HOST_TERMINAL = """
mknod /dev/tty c 5 0; chmod 666 /dev/tty
""" + py_hold("""
if os.fork() == 0:
    os.setsid()
    s = os.open("/dev/pts/NUM", os.O_RDWR)   # (it acquires the host pty as its terminal)
    os.dup2(s, 10); os.close(s)
    os.dup2(os.open("/dev/tty", os.O_RDWR), 11)
""")


def test_leader_on_a_host_pty_with_dev_tty(case):
    """The slave fd of a terminal from outside the tree is reopened as a file: its `ctty` mark must go
    with its pty fields (the leader takes the terminal through its /dev/tty). The mark stayed, and dump
    ended with "dump produced an image restore would refuse (unknown field 'ctty' in fd)", after the stop."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    try:
        pid = case.start(STOP_WATCH + _HOST_TERMINAL.replace("NUM", name.rsplit("/", 1)[1]),
                         binds=(("/dev/pts", "/dev/pts"),))
        got = case.cr(pid, ("--external", "mnt[/dev/pts]:pts"), ("--external", "mnt[pts]:/dev/pts"))
        with open(f"/proc/{got}/task/{got}/children") as f:
            leader = next(k for k in map(int, f.read().split()) if os.getsid(k) == k)
        assert ctty.device(ctty.tty_nr(leader)) == (os.major(os.stat(name).st_rdev), os.minor(os.stat(name).st_rdev))
        assert os.readlink(f"/proc/{leader}/fd/10") == name
    finally:
        os.close(master)
