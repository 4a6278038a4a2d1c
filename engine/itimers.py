"""A process's interval timers (setitimer(2), alarm(2)): recorded at dump, armed again by its stand-in.

An armed timer delivers SIGALRM, SIGVTALRM or SIGPROF to the process when it expires (alarm() for
a timeout, a profiler's tick, a periodic wake-up); without it the restored tree would wait for a
signal that never comes. Only a process reads its own (getitimer; no /proc file shows them): dump
has the stopped process make the calls (engine/inject.py, the three in one stop) and records the
armed ones (`read`: time left and interval, in microseconds as setitimer takes them); its
stand-in arms them again as it detaches (`make`). A process the calls cannot be run in
(engine/inject.py) is not looked at.
"""

from __future__ import annotations

import errno

_NR_GETITIMER, _NR_SETITIMER = 36, 38
NAMES = ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")
SIGNALS = (14, 26, 27)   # what each delivers: SIGALRM, SIGVTALRM, SIGPROF
MAX_US = (1 << 62) // 1000   # (kept below what the kernel's nanoseconds hold)
# (struct itimerval, 4 words: interval {sec, usec}, value {sec, usec}; a zero value is disarmed)
CALLS = [(_NR_GETITIMER, (which, None), 4) for which in range(3)]


def read(pid: int, got) -> list[dict]:
    """`pid`'s armed interval timers as image entries ({which: 0..2, value, interval: microseconds});
    [] when they cannot be read. `got`: as `armed`'s. A periodic ITIMER_REAL that rang and whose
    SIGALRM the process has not taken yet shows no time left, its interval only (the kernel arms
    it again as the signal is taken: a stopped process's, or one ringing as it is read): it is
    recorded due at once (1 us), so that the restored one rings and runs on. (One disarmed by a
    setitimer that kept an interval reads the same: rare, and armed again.)"""
    if isinstance(got, OSError) or any(g is None or g[0] != 0 for g in got):
        return []
    us = lambda s, u: min(s * 1_000_000 + u, MAX_US)   # noqa: E731
    out = []
    for which, (_, words) in enumerate(got):
        if any(words[2:]) or which == 0 and any(words[:2]):
            out.append({"which": which, "value": max(us(*words[2:]), 1), "interval": us(*words[:2])})
    return out


def make(entries: list[dict]) -> None:
    """In a stand-in: arm each interval timer of `entries` (image "itimers") with setitimer."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    for e in entries:
        spec = struct.pack("=4q", *divmod(e["interval"], 1_000_000), *divmod(e["value"], 1_000_000))
        if libc.syscall(ctypes.c_long(_NR_SETITIMER), ctypes.c_long(e["which"]),
                        ctypes.create_string_buffer(spec, 32), ctypes.c_void_p(0)) != 0:
            e_no = ctypes.get_errno()
            raise OSError(e_no, f"setitimer({NAMES[e['which']]}): {errno.errorcode.get(e_no, e_no)}")

