"""zdtm/criu_tests.py `_Run.hold_still`: a test that moves on its own is stopped for its state and the
dump (the state the dump reads is then the one compared), and resumed after; one that sleeps is
left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from zdtm import criu_tests, snapshot
from zdtm.criu_source import TestProgram as Program

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the snapshot reads another process's fds (pidfd_getfd)")

# A parent that sleeps and a child that writes to a file without end (mem-touch's log): its fd's
# offset moves between two looks.
BUSY = "import os, time\nif os.fork() == 0:\n    f = open(os.environ['OUT'], 'w')\n    while True: f.write('x')\n" \
       "time.sleep(600)\n"
IDLE = "import time\ntime.sleep(600)\n"


def _run(code: str, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OUT": str(tmp_path / "out")},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            pass_fds=())
    r = criu_tests._Run.__new__(criu_tests._Run)
    r.p, r.test_pid, r.timeout, r.held = Program("t", sys.executable, (), {}), proc.pid, 30.0, []
    return proc, r


def _stopped(pid: int) -> bool:
    return criu_tests._state(pid) == "T"


def test_a_test_that_moves_on_its_own_is_stopped_for_its_state_then_resumed(tmp_path):
    proc, r = _run(BUSY, tmp_path)
    try:
        for _ in range(3000):   # (the child started and opened its file)
            if len(snapshot.tree_pids(proc.pid)) == 2 and os.path.exists(tmp_path / "out"):
                break
            time.sleep(0.01)
        state = r.hold_still(snapshot.take(proc.pid, ignore_maps_on=()))
        pids = snapshot.tree_pids(proc.pid)
        assert sorted(r.held) == sorted(pids) and all(_stopped(p) for p in pids)
        assert snapshot.compare(state, snapshot.take(proc.pid, ignore_maps_on=()))[0]   # (what the dump reads)
        r.resume()
        assert r.held == [] and not any(_stopped(p) for p in pids)
    finally:
        snapshot.kill_tree(proc.pid)
        proc.wait()


def test_a_test_that_sleeps_is_left_running(tmp_path):
    proc, r = _run(IDLE, tmp_path)
    try:
        before = snapshot.take(proc.pid, ignore_maps_on=())
        assert r.hold_still(before) is before and r.held == [] and not _stopped(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
