"""engine/freeze.py's waits without a running tree: kill_all (dump's end) and wait_stopped."""

from __future__ import annotations

import os
import signal
import subprocess

from engine import freeze


def _state(pid: int) -> str:
    return freeze.state(pid)


def test_kill_all_returns_with_every_process_gone_or_a_zombie():
    """kill_all kills each process and returns once each has exited (a zombie here: the caller, its
    parent, has not reaped it), a pid already gone among them; a stopped one is killed too."""
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    try:
        os.kill(kids[1].pid, signal.SIGSTOP)
        gone = subprocess.Popen(["true"])
        gone.wait()
        freeze.kill_all([k.pid for k in kids] + [gone.pid])
        assert [_state(k.pid) for k in kids] == ["Z", "Z", "Z"]
    finally:
        for k in kids:
            k.kill()
            k.wait()
    assert all(k.returncode == -signal.SIGKILL for k in kids)


def test_wait_stopped_sees_each_process_stopped():
    """wait_stopped returns once each process shows T (its backoff starts at 0.1 ms)."""
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    try:
        freeze.signal_all([k.pid for k in kids], signal.SIGSTOP)
        freeze.wait_stopped([k.pid for k in kids])
        assert [_state(k.pid) for k in kids] == ["T", "T", "T"]
    finally:
        for k in kids:
            k.kill()
            k.wait()
