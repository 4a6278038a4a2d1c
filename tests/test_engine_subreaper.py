"""The child subreaper flag and the blocked signals of a process (tini -s, catatonit, dumb-init):
read by dump (the flag asked inside the stopped process: engine/inject.py, engine/subreaper.py),
taken by the stand-ins, compared by the snapshot; and what asking leaves behind (nothing)."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from enginecase import HOLD, case  # noqa: F401  (fixture)
from engine import inject, seccomp_eval, subreaper

pytestmark = pytest.mark.skipif(not inject.SUPPORTED, reason="the call is run in another process on x86-64 only")

_PRCTL, _GET = 157, 37


def _bpf(*insns) -> str:
    return b"".join(struct.pack("=HBBI", *i) for i in insns).hex()


# ld nr; jeq prctl ? next : allow; ld args[0]; jeq 37 ? ret(action) : allow
def _filter(action: int) -> list[dict]:
    return [{"insns": _bpf((0x20, 0, 0, 0), (0x15, 0, 3, _PRCTL), (0x20, 0, 0, 16), (0x15, 0, 1, _GET),
                           (0x06, 0, 0, action), (0x06, 0, 0, seccomp_eval.RET_ALLOW))}]


def test_filters_are_evaluated_for_the_call():
    """A filter that kills, traps or fails prctl(PR_GET_CHILD_SUBREAPER) does not let it run; one
    that allows or logs does; one with an instruction not run here is not trusted."""
    assert not seccomp_eval.call_allowed(_filter(0x80000000), _PRCTL, (_GET, 0), 0)      # kill process
    assert not seccomp_eval.call_allowed(_filter(0x00050001), _PRCTL, (_GET, 0), 0)      # errno 1
    assert seccomp_eval.call_allowed(_filter(0x00050001), _PRCTL, (36, 0), 0)            # another prctl
    assert seccomp_eval.call_allowed(_filter(seccomp_eval.RET_LOG), _PRCTL, (_GET, 0), 0)
    assert not seccomp_eval.call_allowed([{"insns": _bpf((0xff, 0, 0, 0))}], _PRCTL, (_GET, 0), 0)


_CHILD = """
import ctypes, os, signal, sys, time
libc = ctypes.CDLL(None)
if sys.argv[1] == "1":
    libc.prctl(36, 1, 0, 0, 0)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
if os.fork() == 0:
    libc.prctl(1, 9, 0, 0, 0)   # (PR_SET_PDEATHSIG: gone with its parent)
    time.sleep(100)
    os._exit(0)
print("ready", flush=True)
print(os.read(0, 5).decode(), flush=True)   # (a read the call interrupts: restarted, not failed)
"""


def _start(flag: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _CHILD, flag], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def _blocked(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("SigBlk:"))


def test_the_flag_is_read_inside_the_process_and_leaves_nothing_behind():
    """The flag is read (set and not), running or stopped; the process's blocked set is what it
    was (an int3's SIGTRAP would have unblocked itself), its read restarted and answered."""
    procs = [_start("1"), _start("0")]
    try:
        masks = [_blocked(p.pid) for p in procs]
        assert [subreaper.read(p.pid) for p in procs] == [True, False]
        os.kill(procs[0].pid, signal.SIGSTOP)
        time.sleep(0.1)
        assert subreaper.read(procs[0].pid)
        os.kill(procs[0].pid, signal.SIGCONT)
        assert [_blocked(p.pid) for p in procs] == masks
        for p in procs:
            out, _ = p.communicate(b"hello", timeout=60)
            assert out == b"hello\n" and p.returncode == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()



def filtered_child(action: int) -> str:
    """_CHILD's code with a seccomp filter (no_new_privs first) whose `action` answers
    prctl(PR_GET_CHILD_SUBREAPER), installed before it says ready."""
    return _CHILD.replace('print("ready"', f'''
import struct
prog = bytes.fromhex("{_filter(action)[0]["insns"]}")
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
libc.prctl(38, 1, 0, 0, 0)
assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0
print("ready"''')

def test_a_filter_that_would_kill_the_call_is_refused_and_the_process_lives():
    """A process whose seccomp filter kills prctl(PR_GET_CHILD_SUBREAPER) is never sent it: the
    read is refused with the reason (by dump before the stop), the process runs on."""
    code = filtered_child(0x80000000)
    p = subprocess.Popen([sys.executable, "-c", code, "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        with pytest.raises(subreaper.SubreaperError, match="seccomp filters"):
            subreaper.read(p.pid)
        # (and dump refuses it before the stop: the parent of a process of the tree)
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            kids = [int(c) for c in f.read().split()]
        with pytest.raises(subreaper.SubreaperError, match="seccomp filters"):
            subreaper.precheck([p.pid, *kids])
        subreaper.precheck(kids)   # (no parent among them: nothing asked)
        out, _ = p.communicate(b"alive", timeout=60)
        assert out == b"alive\n" and p.returncode == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_subreaper_and_its_blocked_signals_come_back(case):
    """A parent that is a child subreaper and blocks SIGTERM and SIGUSR1 (tini -s): its stand-in
    is one and blocks them too (the snapshot compares both); it came back without either."""
    setup = f"""
python3 -c '
import ctypes, os, signal
libc = ctypes.CDLL(None)
libc.prctl(36, 1, 0, 0, 0)
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM, signal.SIGUSR1}})
if os.fork() == 0:
    os.execv("{HOLD}", ["{HOLD}", "100000"])
libc.prctl(15, b"mntcr-hold", 0, 0, 0)   # PR_SET_NAME: ready
while True:
    signal.pause()
' </dev/null >/dev/null 2>&1 &
exec {HOLD} 100000 </dev/null >/dev/null 2>&1
"""
    before, after = case.roundtrip(setup)
    bits = [line for p in after.snap.procs for line in p.text().splitlines() if "subreaper=1" in line]
    assert len(bits) == 1 and "sigblk=0000000000004200" in bits[0], bits
