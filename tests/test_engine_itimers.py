"""engine/itimers.py: a process with an armed interval timer (setitimer, alarm) is refused with one
line (a stand-in would have none: the signal it waits for never comes), the tree resumed; read by
the stopped process's own getitimer (engine/inject.py)."""

from __future__ import annotations

import re

import pytest

from engine import inject
from enginecase import CRError, case, py_hold  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids

pytestmark = pytest.mark.skipif(not inject.SUPPORTED, reason="engine/inject.py runs calls on x86_64 only")

_ALARM = ("import signal\n"
          "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
          "signal.setitimer(signal.ITIMER_REAL, 3600)\n")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_an_armed_timer_is_refused_and_the_tree_runs_on(case):
    pid = case.start(py_hold(_ALARM))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(r"process \d+ has an armed interval timer \(ITIMER_REAL: setitimer or alarm\): not restored",
                     msg), msg
    assert len(msg.strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert all(_state(p) != "T" for p in tree_pids(pid))   # (resumed)


def test_a_timer_that_expired_is_no_refusal(case):
    pid = case.start(py_hold("import signal, time\n"
                             "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                             "signal.setitimer(signal.ITIMER_REAL, 0.01)\n"
                             "time.sleep(0.1)\n"))
    case.dump(pid, case.new_images_dir())
