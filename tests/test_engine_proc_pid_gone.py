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
