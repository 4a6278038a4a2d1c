"""engine/posixtimers.py: a process with a POSIX timer (timer_create) is refused with one line
before the tree is stopped (a stand-in would have none: the tree's ticks lost silently), and the
tree keeps running; the same tree without the timer dumps."""

from __future__ import annotations

import re

import pytest

from enginecase import STOP_WATCH, CRError, case, py_hold, was_stopped  # noqa: F401  (fixture)

_TIMER = ("import ctypes\n"
          "t = ctypes.c_int()\n"
          "assert ctypes.CDLL(None).timer_create(1, None, ctypes.byref(t)) == 0   # CLOCK_MONOTONIC, SIGALRM\n")


def test_a_posix_timer_is_refused_before_the_stop(case):
    pid = case.start(STOP_WATCH + py_hold(_TIMER))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(r"process \d+ has 1 POSIX timer \(timer_create\): not restored", msg), msg
    assert len(msg.strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_without_a_timer_it_dumps(case):
    pid = case.start(py_hold(""))
    case.dump(pid, case.new_images_dir())
