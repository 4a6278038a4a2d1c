"""A process's interval timers (setitimer(2), alarm(2)): an armed one is refused.

An armed timer delivers SIGALRM, SIGVTALRM or SIGPROF to the process when it expires (alarm() for
a timeout, a profiler's tick, a periodic wake-up); a stand-in has none, so the restored tree would
wait for a signal that never comes. Only a process reads its own (getitimer; no /proc file shows
them): dump has the stopped process make the calls (engine/incall.py) and refuses one with an
armed timer, the tree resumed. A process incall cannot make calls in is not looked at.
"""

from __future__ import annotations

import errno
import struct

from engine import incall

_NR_GETITIMER = 36
NAMES = ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")


class ItimerError(OSError):
    """A process with an armed interval timer (a one-line reason)."""


def armed(pid: int) -> list[str] | None:
    """The names of `pid`'s armed interval timers; None when they cannot be read."""
    got = incall.calls(pid, [(_NR_GETITIMER, lambda slot, which=which: (which, slot)) for which in range(3)])
    if got is None or any(ret != 0 for ret, _ in got):
        return None
    # (struct itimerval: interval {sec, usec}, value {sec, usec}; a zero value is disarmed)
    return [name for name, (_, raw) in zip(NAMES, got) if any(struct.unpack_from("=4q", raw)[2:])]


def check(pid: int) -> None:
    """Refuse (ItimerError) `pid` when it has an armed interval timer."""
    names = armed(pid)
    if names:
        raise ItimerError(errno.EOPNOTSUPP, f"process {pid} has an armed interval timer ({', '.join(names)}: "
                                            "setitimer or alarm): not restored; let it expire or disarm it "
                                            "before the dump")
