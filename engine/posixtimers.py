"""A process's POSIX timers (timer_create(2)): refused, before the stop.

A timer lives in the process's signal state, armed or not, with its id, clock, and what it
delivers (a signal and its value, to the process or a thread); glibc makes one for timer_create
users (a daemon's periodic tick, SIGEV_THREAD helpers). A stand-in is forked by the restorer and
has none: a restored tree would wait for ticks that never come, silently. What is left of them
outside the process (/proc/PID/timers: id, signal, notify, clock) is not their time left or
interval, nor anything restore could recreate under the same id, so dump refuses a process that
has one. (setitimer(2) timers leave no trace outside the process: not seen.)
"""

from __future__ import annotations

import errno


class TimerError(OSError):
    """A process with POSIX timers (a one-line reason)."""


def count(pid: int) -> int:
    """How many POSIX timers `pid` has (0 on a kernel without /proc/PID/timers, or a process gone)."""
    try:
        with open(f"/proc/{pid}/timers") as f:
            return sum(1 for line in f if line.startswith("ID:"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def check(pids) -> None:
    """Refuse (TimerError) the first process of `pids` that has a POSIX timer."""
    for pid in pids:
        n = count(pid)
        if n:
            raise TimerError(errno.EOPNOTSUPP, f"process {pid} has {n} POSIX timer{'s' if n > 1 else ''} "
                                               "(timer_create): not restored; stop the program's timers "
                                               "(or the program) before the dump")
