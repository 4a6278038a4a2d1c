"""An fd on a file of /proc/N/ whose process N has exited is refused at dump, the tree left
running (CRIU's remap_dead_pid: restore reopened /proc/6/mountinfo, which names nothing then, and
failed after the dump had succeeded)."""

from __future__ import annotations

import os
import re

import pytest

from enginecase import STOP_WATCH, case, py_hold, was_stopped  # noqa: F401  (fixture)

SETUP = py_hold("""
import signal, time
child = os.fork()
if child == 0:
    time.sleep(1000)
f = os.open(f"/proc/{child}/mountinfo", os.O_RDONLY)
os.kill(child, signal.SIGKILL); os.waitpid(child, 0)
os.dup2(f, 10); os.close(f)
""")


def test_fd_on_proc_dir_of_a_gone_process_is_refused(case, tmp_path):
    pid = case.start(STOP_WATCH + SETUP)
    with pytest.raises(AssertionError) as err:
        case.dump(pid, str(tmp_path / "img"))
    assert re.search(r"fd 10 \(/proc/\d+/mountinfo\): a file of process \d+'s /proc directory, and that process "
                     "is gone", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "T"


LIVE = py_hold("""
import time
child = os.fork()
if child == 0:
    os.dup2(os.open("/dev/null", os.O_RDWR), 1); os.dup2(1, 2)
    os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
os.dup2(os.open(f"/proc/{child}/status", os.O_RDONLY), 10)
""")


def test_fd_on_proc_dir_of_a_live_process_is_refused(case, tmp_path):
    # CRIU's fanotify00 keeps /proc/self/fdinfo/N open; restore reopened /proc/N/... by its number,
    # which names another process (or none) among the stand-ins.
    pid = case.start(LIVE)
    with pytest.raises(AssertionError) as err:
        case.dump(pid, str(tmp_path / "img"))
    assert "a file of process 2's /proc directory: restore keeps no pid numbers" in str(err.value)
    assert os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "T"


def test_fd_on_proc_dir_of_the_pid_namespace_init_is_restored(case):
    # pid 1 of a pid namespace made again is pid 1 again: its /proc/1/... names the same process.
    case.roundtrip(py_hold('os.dup2(os.open("/proc/1/task", os.O_RDONLY | os.O_DIRECTORY), 10)\n'))
