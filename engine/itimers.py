"""A process's interval timers (setitimer(2), alarm(2)): an armed one is refused.

An armed timer delivers SIGALRM, SIGVTALRM or SIGPROF to the process when it expires (alarm() for
a timeout, a profiler's tick, a periodic wake-up); a stand-in has none, so the restored tree would
wait for a signal that never comes. Only a process reads its own (getitimer; no /proc file shows
them): dump has the stopped process make the calls (engine/inject.py, the three in one stop)
and refuses one with an armed timer, the tree resumed. A process the calls cannot be run in
(engine/inject.py) is not looked at.
"""

from __future__ import annotations

import errno

from engine import inject

_NR_GETITIMER = 36
NAMES = ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")
# (struct itimerval, 4 words: interval {sec, usec}, value {sec, usec}; a zero value is disarmed)
CALLS = [(_NR_GETITIMER, (which, None), 4) for which in range(3)]


class ItimerError(OSError):
    """A process with an armed interval timer (a one-line reason)."""


def armed(pid: int, got=None) -> list[str] | None:
    """The names of `pid`'s armed interval timers; None when they cannot be read. `got`: the
    answers of CALLS made in it (engine/inject.py `calls`, with skip_denied) or the OSError that
    made them fail; asked here when None."""
    if got is None:
        try:
            got = inject.calls(pid, CALLS, skip_denied=True)
        except OSError:
            return None
    if isinstance(got, OSError) or any(g is None or g[0] != 0 for g in got):
        return None
    return [name for name, (_, words) in zip(NAMES, got) if any(words[2:])]


def check(pid: int, got=None) -> None:
    """Refuse (ItimerError) `pid` when it has an armed interval timer (`got`: as `armed`'s)."""
    names = armed(pid, got)
    if names:
        raise ItimerError(errno.EOPNOTSUPP, f"process {pid} has an armed interval timer ({', '.join(names)}: "
                                            "setitimer or alarm): not restored; let it expire or disarm it "
                                            "before the dump")
