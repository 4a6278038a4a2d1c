"""engine/inject.py: calls run inside another process, a batch in one seize; no call sent where
the process's seccomp filters would not let it through, none into a process traced already; the
process left as it was."""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

import enginecase
from engine import inject, seccomp_eval

pytestmark = pytest.mark.skipif(not inject.SUPPORTED, reason="engine/inject.py runs calls on x86-64 only")

_GETPID, _GETPPID, _PRCTL, _GET_PDEATHSIG = 39, 110, 157, 2

# ld nr; jeq prctl ? next : allow; ld args[0]; jeq 2 ? kill : allow
_KILL_PDEATHSIG = b"".join(struct.pack("=HBBI", *i) for i in (
    (0x20, 0, 0, 0), (0x15, 0, 3, _PRCTL), (0x20, 0, 0, 16), (0x15, 0, 1, _GET_PDEATHSIG),
    (0x06, 0, 0, 0x80000000), (0x06, 0, 0, seccomp_eval.RET_ALLOW))).hex()

_CHILD = f"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None)
libc.prctl(1, 10, 0, 0, 0)   # (PR_SET_PDEATHSIG SIGUSR1)
if sys.argv[1] == "filter":
    prog = bytes.fromhex("{_KILL_PDEATHSIG}")
    buf = ctypes.create_string_buffer(prog)
    libc.prctl(38, 1, 0, 0, 0)
    assert libc.prctl(22, 2, ctypes.c_char_p(struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))), 0, 0) == 0
print("ready", flush=True)
print(os.read(0, 5).decode(), flush=True)   # (a read the calls interrupt: restarted, not failed)
"""


def _start(kind: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _CHILD, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    _wait_in_read(p.pid)
    return p


def _wait_in_read(pid: int, timeout: float = 60) -> None:
    """Until `pid` waits in read(2) (/proc/PID/syscall's first word 0): the calls then interrupt it."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[0] == "0":
                return
        if time.monotonic() > deadline:
            raise enginecase.SetupError(f"process {pid} did not reach its read within {timeout:g}s")
        time.sleep(0.01)


def _finish(p: subprocess.Popen) -> None:
    try:
        out, _ = p.communicate(b"alive", timeout=60)
        assert out == b"alive\n" and p.returncode == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_batch_runs_in_order_in_one_seize_and_the_process_runs_on():
    p = _start("plain")
    try:
        got = inject.calls(p.pid, [(_GETPID, (), 0), (_PRCTL, (_GET_PDEATHSIG, None), 1), (_GETPPID, (), 0)])
        assert [g[0] for g in got] == [p.pid, 0, os.getpid()]
        assert got[1][1][0] & 0xFFFFFFFF == signal.SIGUSR1
    finally:
        _finish(p)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_stops_are_waited_for_on_sigchld_not_polled(monkeypatch):
    """The tracer sleeps until the tracee's stop is told it (SIGCHLD), neither spinning on
    sched_yield nor sleeping in steps (which kept a tracee that needed our CPU from its stop, or
    saw it 8-16 ms late); our SIGCHLD mask is left as it was, blocked or not."""
    def polled(*_):
        raise AssertionError("polled for a stop")

    def sleep(t, _sleep=time.sleep):
        if sys._getframe(1).f_code is inject._wait_stop.__code__:
            polled()
        _sleep(t)
    p = _start("plain")
    try:
        # (a stopped process: seized, it has to run to report its trap; stopped before the call, or
        # the call waits for it to be back in its read, by looks and sleeps of its own)
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while _state(p.pid) != "T":
            assert time.monotonic() < deadline, "the process did not stop"
            time.sleep(0.01)
        monkeypatch.setattr(os, "sched_yield", polled)
        monkeypatch.setattr(time, "sleep", sleep)
        before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        assert inject.call(p.pid, _GETPID)[0] == p.pid
        assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == before
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGCHLD,))
        try:
            assert inject.call(p.pid, _GETPPID)[0] == os.getpid()
            assert signal.SIGCHLD in signal.pthread_sigmask(signal.SIG_BLOCK, ())
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
    finally:
        monkeypatch.undo()
        os.kill(p.pid, signal.SIGCONT)
        _finish(p)


def test_a_stopped_process_is_back_in_its_stop_when_the_call_returns():
    """Let go, a stopped process runs a moment from its trace stop back to its stop: the call
    returns once it is there, so what is read of it next (its stack pointer in /proc/PID/syscall,
    engine/timersigs.py) is not "running" (it was, ~1 call in 30 under load)."""
    p = _start("plain")
    try:
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while _state(p.pid) != "T":
            assert time.monotonic() < deadline, "the process did not stop"
            time.sleep(0.01)
        for _ in range(100):
            assert inject.call(p.pid, _GETPID)[0] == p.pid
            with open(f"/proc/{p.pid}/syscall") as f:
                assert not f.read().startswith("running")
            assert _state(p.pid) == "T"
    finally:
        os.kill(p.pid, signal.SIGCONT)
        _finish(p)


def test_a_call_a_filter_would_kill_is_never_sent():
    """The filter kills prctl(PR_GET_PDEATHSIG): refused before any call (or skipped, the others
    made); the process lives (it would die of the call)."""
    p = _start("filter")
    try:
        with pytest.raises(inject.InjectError, match="seccomp filters"):
            inject.calls(p.pid, [(_GETPID, (), 0), (_PRCTL, (_GET_PDEATHSIG, None), 1)])
        got = inject.calls(p.pid, [(_GETPID, (), 0), (_PRCTL, (_GET_PDEATHSIG, None), 1)], skip_denied=True)
        assert got[0][0] == p.pid and got[1] is None
    finally:
        _finish(p)


def test_a_traced_process_is_left_alone():
    traced_r, traced_w = os.pipe()   # (the child says it is traced)
    done_r, done_w = os.pipe()       # (we say the calls are over: it exits)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(traced_r)
            os.close(done_w)
            if ctypes.CDLL(None).ptrace(0, 0, None, None) == 0:   # (PTRACE_TRACEME: we trace it)
                os.write(traced_w, b"t")
                os.read(done_r, 1)
                code = 0
        finally:
            os._exit(code)
    os.close(traced_w)
    os.close(done_r)
    try:
        if os.read(traced_r, 1) != b"t":
            raise enginecase.SetupError("the child could not make us its tracer (PTRACE_TRACEME)")
        with pytest.raises(inject.InjectError, match="traced by another"):
            inject.calls(pid, [(_GETPID, (), 0)])
    finally:
        os.close(done_w)
        os.close(traced_r)
        assert os.waitpid(pid, 0)[1] == 0


_SPINNERS = r"""
#include <pthread.h>
#include <stdio.h>
static volatile unsigned long ticks[2];
static void *spin(void *arg) { unsigned long i = (unsigned long)arg; for (;;) ticks[i]++; return 0; }
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, spin, (void *)1);
    printf("%p\n", (void *)spin); fflush(stdout);
    spin(0);
}
"""


def test_a_running_thread_in_its_own_code_gets_nothing_written(tmp_path):
    """Two threads spinning in the same function, the main one not in a call: the calls run from a
    `syscall` the process's code already holds (its vdso's), so no page of its code becomes its
    own copy (which the other thread, running that page meanwhile, could execute: a JVM aborted)."""
    src = tmp_path / "spin.c"
    src.write_text(_SPINNERS)
    r = subprocess.run(["gcc", "-O1", "-pthread", "-o", str(tmp_path / "spin"), str(src)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"no C compiler here: {r.stderr.strip()[-200:]}")
    p = subprocess.Popen([str(tmp_path / "spin")], stdout=subprocess.PIPE, text=True)
    try:
        spin = int(p.stdout.readline(), 16)
        before = enginecase.private_dirty(p.pid, spin)
        for _ in range(20):
            ((answer, _words),) = inject.calls(p.pid, [(_GETPID, (), 0)])
            assert answer == p.pid
        assert p.poll() is None, "the process died of the calls"
        assert enginecase.private_dirty(p.pid, spin) == before, "a page of its code was written"
        with open(f"/proc/{p.pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "R"
    finally:
        p.kill()
        p.wait()


_VFORKER = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    printf("%d\n", getpid()); fflush(stdout);
    if (argv[1][0] == 'v') {
        if (vfork() == 0) { pause(); _exit(0); }   /* a child that neither execs nor exits */
    } else if (argv[1][0] == 'c') {   /* clone(CLONE_VFORK | SIGCHLD) on the same stack, as vfork */
        if (syscall(SYS_clone, CLONE_VFORK | CLONE_VM | SIGCHLD, 0, 0, 0, 0) == 0) { pause(); _exit(0); }
    } else {
        pause();
    }
    return 0;
}
"""


@pytest.mark.parametrize("how,waits", [("vfork", True), ("clone", True), ("pause", False)])
def test_in_vfork(tmp_path, how, waits):
    """A parent waiting in vfork(2) or clone(CLONE_VFORK) for a child that neither execs nor exits
    is told (prestop refuses it before the stop: no call runs in it); a process sleeping in pause
    is not."""
    src = tmp_path / "vforker.c"
    src.write_text(_VFORKER)
    r = subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "vforker"), str(src)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"no C compiler here: {r.stderr.strip()[-200:]}")
    p = subprocess.Popen([str(tmp_path / "vforker"), how], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid = int(p.stdout.readline())
        for _ in range(200):   # (until it sleeps: D in the vfork wait, S in pause)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("D", "S"):
                    break
            time.sleep(0.05)
        assert inject.in_vfork(pid) is waits
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
