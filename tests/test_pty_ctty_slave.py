"""A session leader whose controlling terminal is a pty slave it holds, without /dev/tty (a shell on
a container's console: `runc run -t`, systemd-nspawn): dump marks that slave `ctty` and restore's
stand-in takes it again (engine/fds/pty.py); the validator takes `ctty` only on a live slave.
(scenarios/runtimes/oci_tty.yaml runs the real case.)"""

from __future__ import annotations

import fcntl
import os
import struct
import termios

import pytest

from engine import image
from engine.fds import pty

ENTRY = {"obj": "pty-1", "ptmx": {"mnt": 3, "path": "/dev/pts/ptmx"}}


def _pty():
    m = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(m, pty.TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(m, pty.TIOCGPTN, b"\0\0\0\0"))[0]
    return m, os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)


@pytest.mark.parametrize("take", [True, False])
def test_a_leader_holding_its_terminal_is_seen(take):
    if not os.path.exists("/dev/ptmx"):
        pytest.skip("no /dev/ptmx here")
    m, s = _pty()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if take:
                fcntl.ioctl(s, termios.TIOCSCTTY, 0)
            os.write(ready_w, b"x")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        assert pty.holds_ctty_slave(pid) is take
        assert pty.leads_on(pid, os.fstat(s).st_rdev) is take
    finally:
        os.write(go_w, b"y")
        os.waitpid(pid, 0)
        for fd in (m, s, ready_r, ready_w, go_r, go_w):
            os.close(fd)


@pytest.mark.parametrize("entry", [{"end": "master", "ctty": True}, {"end": "slave", "orphan": True, "ctty": True}])
def test_validator_refuses_ctty_on_a_master_or_a_hung_up_slave(entry):
    with pytest.raises(image.ImageError, match="controlling terminal"):
        pty._check({**ENTRY, **entry}, "fd 0")


def test_validator_takes_ctty_on_a_slave():
    pty._check({**ENTRY, "end": "slave", "ctty": True}, "fd 0")
