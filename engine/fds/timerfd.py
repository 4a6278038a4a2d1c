"""timerfd: clock, interval and the time left (re-armed relative to the restore).

The remaining time is what it was at dump: the time the tree spent dumped
does not count (CRIU does the same for relative timers). Expirations not yet
read (fdinfo ticks) are not given back: the kernel has no way to set them.
"""

from __future__ import annotations

import os
from engine import rx

from engine.imageformat import INT, F
from engine.fds import FdKind, RestoreFd, register
from engine.fds import sys as fsys

_PAIR = rx.compile(r"\((\d+),\s*(\d+)\)")
CLOCKS = (0, 1, 7, 8, 9)   # REALTIME, MONOTONIC, BOOTTIME, REALTIME_ALARM, BOOTTIME_ALARM


def _ns(text: str) -> int:
    m = _PAIR.match(text)
    return int(m[1]) * 10**9 + int(m[2])


def _dump(d) -> dict:
    info = d.info()
    return {"clockid": int(info["clockid"][0]), "value_ns": _ns(info["it_value"][0]),
            "interval_ns": _ns(info["it_interval"][0]), "ticks": int(info.get("ticks", ["0"])[0])}


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if entry.get("clockid") not in CLOCKS:
        _fail(f"{what}: bad timerfd clock")
    for k in ("value_ns", "interval_ns"):
        if not isinstance(entry.get(k), int) or entry[k] < 0:
            _fail(f"{what}: bad timerfd {k}")


def _open(r: RestoreFd) -> int:
    e = r.entry
    fd = fsys.timerfd_create(e["clockid"], os.O_CLOEXEC | (e["flags"] & os.O_NONBLOCK))
    value = e["value_ns"] or (1 if e.get("ticks") else 0)   # fired and unread: fire again at once
    if value or e["interval_ns"]:
        fsys.timerfd_settime(fd, value or e["interval_ns"], e["interval_ns"])
    return fd


register(FdKind(name="timerfd", matches=lambda t, m: t == "anon_inode:[timerfd]", dump=_dump, open=_open,
                check=_check, fields={"clockid": F(INT), "value_ns": F(INT), "interval_ns": F(INT), "ticks": F(INT, required=False)}))
