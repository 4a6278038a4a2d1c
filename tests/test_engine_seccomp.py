"""engine/seccomp.py: reading a stopped process's filters, the refusals, the image's rule."""

import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from engine import imageformat, seccomp

ALLOW = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
NOTIF = struct.pack("=HBBI", 0x06, 0, 0, 0x7FC00000)

_CHILD = """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
class F(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
assert libc.prctl(38, 1, 0, 0, 0) == 0
for k, flags in ((0x7FFF0000, 0), (0x7FFF0001, 2)):   # the second one logged
    buf = ctypes.create_string_buffer(struct.pack("=HBBI", 6, 0, 0, k))
    assert libc.syscall(317, 1, flags, ctypes.byref(F(1, ctypes.addressof(buf)))) == 0
os.write(1, b"x")
os.execvp("sleep", ["sleep", "100"])
"""


@pytest.mark.skipif(os.uname().machine != "x86_64" or os.geteuid() != 0, reason="x86-64 numbers in the child; ptrace as root")
def test_read_a_stopped_process_leaves_it_stopped():
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE)
    try:
        assert child.stdout.read(1) == b"x"
        os.kill(child.pid, signal.SIGSTOP)
        for _ in range(100):
            if open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T":
                break
            time.sleep(0.01)
        got = seccomp.read(child.pid)
        assert got == [{"insns": struct.pack("=HBBI", 6, 0, 0, 0x7FFF0000).hex(), "log": False},
                       {"insns": struct.pack("=HBBI", 6, 0, 0, 0x7FFF0001).hex(), "log": True}]
        assert imageformat._seccomp_rule(got) is None
        time.sleep(0.05)
        status = open(f"/proc/{child.pid}/status").read()
        assert "TracerPid:\t0" in status and "State:\tT (stopped)" in status
    finally:
        child.kill()
        child.wait()


def test_user_notif_is_seen():
    assert seccomp._notifies(ALLOW + NOTIF)
    assert not seccomp._notifies(ALLOW)


@pytest.mark.parametrize("bad", [[], [{"insns": "00", "log": False}], [{"insns": ALLOW.hex()}],
                                 [{"insns": "zz" * 8, "log": False}], [{"insns": ALLOW.hex(), "log": 1}]])
def test_rule_rejects(bad):
    assert imageformat._seccomp_rule(bad) is not None
    assert imageformat._seccomp_rule([{"insns": ALLOW.hex(), "log": False}]) is None
