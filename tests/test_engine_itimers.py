"""engine/itimers.py: a process's armed interval timers (setitimer, alarm) are recorded (read by
the stopped process's own getitimer: engine/inject.py) and armed again by its stand-in with the
time they had left and their interval (the snapshot compares which are armed and their interval);
a tick whose signal the process caught does not kill the restored tree (engine/timersigs.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from engine import inject
from enginecase import assert_same, case, py_hold, take, wait_until  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids

pytestmark = pytest.mark.skipif(not inject.SUPPORTED, reason="engine/inject.py runs calls on x86_64 only")

_TIMERS = ("import signal\n"
           "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
           "signal.setitimer(signal.ITIMER_REAL, 3600, 60)\n"
           "signal.signal(signal.SIGPROF, lambda *_: None)\n"
           "signal.setitimer(signal.ITIMER_PROF, 1800)\n")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _itimer_left(pid: int) -> list:
    """(value, interval) of `pid`'s three timers, asked in it."""
    got = inject.calls(pid, [(36, (which, None), 4) for which in range(3)])
    return [(w[2] + w[3] / 1e6, w[0] + w[1] / 1e6) for _, w in got]


def test_armed_timers_are_restored(case):
    pid = case.start(py_hold(_TIMERS))
    before = take(pid)
    assert "itimers=ITIMER_REAL/60000000,ITIMER_PROF/0" in before.root.bits, before.root.bits
    after_pid = case.cr(pid)
    real, virt, prof = _itimer_left(after_pid)
    assert 3000 < real[0] <= 3600 and real[1] == 60, real
    assert virt == (0, 0)
    assert 0 < prof[0] <= 1801 and prof[1] == 0, prof   # (a CPU clock: read in ticks, rounded up)
    assert_same(before, take(after_pid))


def test_an_alarm_that_rings_does_not_kill_the_restored_tree(case):
    # (in a child: init of a pid namespace, the root, would drop a signal at its default action;
    # SIGALRM caught, every 20 ms: its stand-in catches it too)
    pid = case.start(py_hold("import signal\n"
                             "if os.fork() == 0:\n"
                             "    signal.signal(signal.SIGALRM, lambda *_: None)\n"
                             "    signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)\n"))
    before = take(pid)
    after_pid = case.cr(pid)
    time.sleep(0.5)   # (rings: at least a few whatever the load)
    child = [p for p in tree_pids(after_pid) if p != after_pid]
    assert len(child) == 1 and _state(child[0]) not in ("Z", "X"), "a SIGALRM killed the restored child"
    with open(f"/proc/{child[0]}/status") as f:
        status = f.read()
        assert re.search(r"^SigCgt:\s*0*2000$", status, re.M), status
    assert_same(before, take(after_pid))


def test_a_timer_that_expired_is_not_armed_again(case):
    pid = case.start(py_hold("import signal, time\n"
                             "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                             "signal.setitimer(signal.ITIMER_REAL, 0.01)\n"
                             "time.sleep(0.1)\n"))
    after_pid = case.cr(pid)
    assert _itimer_left(after_pid) == [(0, 0)] * 3


def test_a_periodic_alarm_whose_signal_is_pending_is_kept(case):
    # (SIGALRM blocked: it stays pending, and the kernel arms the timer again only as it is taken:
    # getitimer shows no time left, the interval only)
    pid = case.start(py_hold("import signal, time\n"
                             "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n"
                             "signal.setitimer(signal.ITIMER_REAL, 0.01, 0.05)\n"
                             "time.sleep(0.1)\n"))
    assert _itimer_left(pid)[0] == (0, 0.05)
    before = take(pid)
    assert "itimers=ITIMER_REAL/50000" in before.root.bits, before.root.bits
    after_pid = case.cr(pid)
    time.sleep(0.1)
    assert _itimer_left(after_pid)[0] == (0, 0.05)   # (rang at once, its signal pending as before)
    assert_same(before, take(after_pid))


def test_stopped_inside_its_handler_the_mask_outside_it_is_kept(case):
    # (a handler that never returns, made by ctypes: the C library's restorer, a real signal frame;
    # inside it SIGALRM is blocked, outside SIGUSR1 only: its stand-in must take the ticks, not hold
    # them pending for good. CRIU's `timers` meets it when the stop lands inside its handler.)
    pid = case.start(py_hold("import ctypes, signal, time\n"
                             "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
                             "def stay(sig):\n"
                             "    while True:\n"
                             "        time.sleep(1)\n"
                             "stay_c = ctypes.CFUNCTYPE(None, ctypes.c_int)(stay)\n"
                             "ctypes.CDLL(None).signal(signal.SIGALRM, stay_c)\n"
                             "signal.setitimer(signal.ITIMER_REAL, 3600, 60)\n"))
    os.kill(pid, signal.SIGALRM)   # (now, once it holds: its handler is entered for good)
    wait_until(lambda: re.search(r"^SigBlk:\s*0*2200$", open(f"/proc/{pid}/status").read(), re.M),
               "the process's entry into its handler")
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        p = json.load(f)["processes"][0]
    assert p["sig_blocked"] == 1 << 9 and p["timer_sig_caught"] == 1 << 13, p   # (SIGUSR1 only)
    after_pid = case.restore(images)
    with open(f"/proc/{after_pid}/status") as f:
        assert re.search(r"^SigBlk:\s*0*200$", f.read(), re.M)


def test_stopped_inside_its_sigchld_handler_the_mask_outside_it_is_kept(case):
    # (a parent that caught SIGCHLD and stopped inside its handler: what the tree's stop did to
    # CRIU's zdtm init on a loaded machine, its child's stop before its own; the handler blocks
    # SIGTERM and SIGCHLD as that one's does, outside SIGUSR1 only: the stand-in must not keep
    # the handler's mask, fifo and mnt_ext_sharing came back with it)
    pid = case.start(py_hold("import ctypes, signal, time\n"
                             "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
                             "def stay(sig):\n"
                             "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
                             "    while True:\n"
                             "        time.sleep(1)\n"
                             "stay_c = ctypes.CFUNCTYPE(None, ctypes.c_int)(stay)\n"
                             "ctypes.CDLL(None).signal(signal.SIGCHLD, stay_c)\n"))
    os.kill(pid, signal.SIGCHLD)   # (now, once it holds: its handler is entered for good)
    wait_until(lambda: re.search(r"^SigBlk:\s*0*14200$", open(f"/proc/{pid}/status").read(), re.M),
               "the process's entry into its handler")
    images = case.new_images_dir()
    case.dump(pid, images)
    with open(os.path.join(images, "mntcr.json")) as f:
        p = json.load(f)["processes"][0]
    assert p["sig_blocked"] == 1 << 9, p   # (SIGUSR1 only)
    after_pid = case.restore(images)
    with open(f"/proc/{after_pid}/status") as f:
        assert re.search(r"^SigBlk:\s*0*200$", f.read(), re.M)
