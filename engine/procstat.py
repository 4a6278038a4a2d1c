"""/proc/PID/stat read in one place.

Its second field, the process's name, may hold spaces and parentheses, so the fields are counted
from the last ")". `fields()` returns those after the name: index 0 is the state (field 3 of
proc(5)), and the indices below name the ones the engine and the runner read.
"""

from __future__ import annotations

import os

STATE, PPID, PGRP, SESSION, TTY_NR, TPGID, FLAGS, STARTTIME, EXIT_CODE = 0, 1, 2, 3, 4, 5, 6, 19, 49
PF_EXITING = 0x4          # (task flags: the process is on its way out)
DEAD = (b"Z", b"X", b"x")   # a zombie, or dead and about to go


def fields(pid, base: str | None = "/proc", dir_fd: int | None = None) -> list[bytes]:
    """The stat fields after the name of `pid` (a number, "self", or a path below `base` such as
    "PID/task/TID"): `base`/`pid`/stat, or `pid`/stat relative to `dir_fd` when `base` is None.
    Raises OSError when the process is gone (ProcessLookupError for a read that came back empty)."""
    path = f"{pid}/stat" if base is None else f"{base}/{pid}/stat"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, 4096)   # (a few hundred bytes: the name is at most 64)
    finally:
        os.close(fd)
    end = data.rfind(b")")
    if end < 0:
        raise ProcessLookupError(f"{path}: empty (the process is gone)")
    return data[end + 2:].split()


def state(pid, base: str | None = "/proc", dir_fd: int | None = None) -> bytes:
    """`pid`'s state letter (b"R", b"S", b"T", b"Z"...), b"" when it is gone."""
    try:
        return fields(pid, base, dir_fd)[STATE]
    except OSError:
        return b""


def dead(pid, base: str | None = "/proc") -> bool:
    """Whether `pid` is gone, a zombie, or exiting (PF_EXITING): it has no namespaces any more."""
    try:
        f = fields(pid, base)
    except OSError:
        return True
    return f[STATE] in DEAD or bool(int(f[FLAGS]) & PF_EXITING)
