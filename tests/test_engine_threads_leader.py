"""A process whose main thread has exited while its other threads run (pthread_exit in main, or
the exit syscall of the main thread alone): /proc/PID/stat shows its leader as a zombie (Z) while
task/ lists live threads. mntcr cannot make a process without its main thread again: dump refuses
it before the stop with a line that says so (it used to be told as a zombie not reaped by its
parent, or fail on the leader's missing namespaces)."""

from __future__ import annotations

import os
import re
import time

import pytest

from enginecase import STOP_WATCH, CRError, case, was_stopped  # noqa: F401  (fixture)

# A child of the container's init: two threads that sleep (named worker-0 and worker-1), then its
# main thread exits alone (the raw exit syscall, 60 on x86-64, as pthread_exit ends it). The
# leader keeps the name mntcr-hold (the case waits for it).
LEADER_EXITS = """
import ctypes, os, threading, time
libc = ctypes.CDLL(None)
os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
ready = threading.Barrier(3)
def worker(name):
    libc.prctl(15, name, 0, 0, 0)
    ready.wait()
    while True:
        time.sleep(1000)
for n in (b"worker-0", b"worker-1"):
    threading.Thread(target=worker, args=(n,)).start()
ready.wait()
libc.prctl(15, b"mntcr-hold", 0, 0, 0)
libc.syscall(60, 0)
"""


def _state(task: str) -> str:
    with open(f"/proc/{task}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _exited_leader(pid: int, timeout: float = 10) -> tuple[int, list[int]]:
    """(the child of `pid` whose main thread exited, its two live threads), once it is so (the case
    does not wait for it: a zombie leader is no live process of the tree for zdtm)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for kid in (int(x) for x in f.read().split()):
                got = _exited_leader_of(kid, 0)
                if got is not None:
                    return got
        assert time.monotonic() < deadline, "the main thread did not exit"
        time.sleep(0.02)


def _exited_leader_of(pid: int, timeout: float = 10) -> tuple[int, list[int]] | None:
    """(pid, its two live threads) once its main thread exited (None: not within `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        if _state(str(pid)) == "Z" and len(tids) == 2:
            return pid, tids
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _setup() -> str:
    return "python3 -c '" + LEADER_EXITS.replace("'", "'\\''") + "' &\nhold\n"


def test_exited_main_thread_refused_unstopped(case):
    """Dump refuses naming the process, its comm and its live threads, before it stops anything;
    the tree runs on (the threads still sleep, the leader still a zombie)."""
    if os.uname().machine != "x86_64":
        pytest.skip("the setup calls the exit syscall by its x86-64 number")
    pid = case.start(STOP_WATCH + _setup())
    holder, tids = _exited_leader(pid)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(rf"process {holder} \(mntcr-hold\): its main thread has exited while threads "
                     rf"{tids[0]}, {tids[1]} run; mntcr cannot restore a process without its main thread; "
                     "the tree keeps running", msg), msg
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(str(holder)) == "Z" and all(_state(f"{holder}/task/{t}") in "SR" for t in tids)


def test_checked_again_once_stopped():
    """The same process as a forked child of the test: the checks dump runs once the tree is
    stopped (freeze.refuse_zombies, threads.read) refuse it with the same line (a main thread that
    exits between the pre-stop check and the stop), not as a zombie its parent has not reaped."""
    import signal
    from engine import freeze, threads
    from engine.dumperror import DumpError
    if os.uname().machine != "x86_64":
        pytest.skip("the child calls the exit syscall by its x86-64 number")
    pid = os.fork()
    if pid == 0:
        try:
            exec(LEADER_EXITS.replace("os.dup2(", "(lambda *a: None)("), {})
        finally:
            os._exit(1)
    try:
        got = _exited_leader_of(pid)
        assert got is not None, "the main thread did not exit"
        tids = got[1]
        line = (rf"process {pid} \(mntcr-hold\): its main thread has exited while threads {tids[0]}, {tids[1]} run; "
                "mntcr cannot restore a process without its main thread; the tree keeps running")
        with pytest.raises(DumpError, match=line):
            freeze.refuse_zombies([(pid, None)])
        with pytest.raises(threads.ThreadError, match=line):
            threads.read(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
