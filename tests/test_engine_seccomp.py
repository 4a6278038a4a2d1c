"""engine/seccomp.py: reading a stopped process's filters, the refusals, the image's rule."""

import os
import signal
import struct
import subprocess
import sys
import time

import pytest

import enginecase
from engine import imageformat, seccomp
from enginecase import case  # noqa: F401  (fixture)

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
        enginecase.wait_until(lambda: open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T",
                              "the child's stop (SIGSTOP)")
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


# A process of the tree whose filter hands a call (nr 1000: none) to a supervisor; its listener is
# closed (a runtime's seccomp agent would hold it); no_new_privs lets it install the filter.
NOTIF_SETUP = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
class F(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = struct.pack("=HBBI", 0x20, 0, 0, 0) + struct.pack("=HBBI", 0x15, 0, 1, 1000) \\
    + struct.pack("=HBBI", 6, 0, 0, 0x7FC00000) + struct.pack("=HBBI", 6, 0, 0, 0x7FFF0000)
buf = ctypes.create_string_buffer(prog)
assert libc.prctl(38, 1, 0, 0, 0) == 0
fd = libc.syscall(317, 1, 8, ctypes.byref(F(4, ctypes.addressof(buf))))   # SECCOMP_FILTER_FLAG_NEW_LISTENER
assert fd >= 0, ctypes.get_errno()
os.close(fd)
"""

# Early filters (no no_new_privs, CAP_SYS_ADMIN dropped: its stand-in installs them before its ids)
# that fail setresuid (nr 117) with EPERM: the stand-in could not take its ids (CRIU's seccomp_filter).
DENY_SETRESUID_SETUP = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
class F(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = struct.pack("=HBBI", 0x20, 0, 0, 0) + struct.pack("=HBBI", 0x15, 0, 1, 117) \\
    + struct.pack("=HBBI", 6, 0, 0, 0x00050001) + struct.pack("=HBBI", 6, 0, 0, 0x7FFF0000)
buf = ctypes.create_string_buffer(prog)
assert libc.syscall(317, 1, 0, ctypes.byref(F(4, ctypes.addressof(buf)))) == 0
# (drop CAP_SYS_ADMIN, 21, from the effective set: capset v3)
hdr = struct.pack("=Ii", 0x20080522, 0)
data = ctypes.create_string_buffer(24)
assert libc.syscall(125, hdr, data) == 0   # capget
words = list(struct.unpack("=6I", data.raw))
words[0] &= ~(1 << 21)
assert libc.syscall(126, hdr, struct.pack("=6I", *words)) == 0   # capset
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 system call numbers in the setup")
@pytest.mark.parametrize("setup, pattern", [
    (NOTIF_SETUP, r"process \d+ has a seccomp filter that hands system calls to a supervisor "
                  r"\(SECCOMP_RET_USER_NOTIF\), which is not restored"),
    (DENY_SETRESUID_SETUP, r"process \d+: its seccomp filters deny setresuid\(2\), which its stand-in makes "
                           r"after installing them .*: not restored"),
])
def test_filters_restore_would_not_give_back_refused_unstopped(case, setup, pattern):
    """Read before the stop (a brief ptrace trap of that process alone): refused, the tree never
    stopped (no SIGCONT reached it), still running, and no tracer left on it. The filtered process
    is a leaf (a parent's filters are read before the stop for its subreaper flag already)."""
    from enginecase import STOP_WATCH, py_hold
    from test_engine_prestop import _refused_unstopped
    from zdtm import snapshot
    leaf = py_hold(setup + 'open("/run/.filtered", "w").close()\n').strip().removeprefix("exec ")
    pid = case.start(STOP_WATCH + f"{leaf} </dev/null >/dev/null 2>&1 &\nwait_for /run/.filtered\nhold\n")
    _refused_unstopped(case, pid, pattern)
    for p in snapshot.tree_pids(pid):
        assert "TracerPid:\t0" in open(f"/proc/{p}/status").read()
