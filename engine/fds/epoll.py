"""epoll: its registered targets (fd number, events, data word), registered again by the stand-in.

A target is registered under the fd number it had in the owner's table
(fdinfo `tfd`), so the stand-in does EPOLL_CTL_ADD itself once all its fds are
installed. A target whose fd number is no longer open in the owner (closed or
moved after registration) cannot be named again: refused at dump.
"""

from __future__ import annotations

import os
import re

from engine.imageformat import LIST, F
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.fds import sys as fsys

_TFD = re.compile(r"^(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)")


def _dump(d) -> dict:
    targets = []
    for line in d.info().get("tfd", []):
        m = _TFD.match(line)
        if m is None:
            raise FdError(0, f"{d.where}: unreadable epoll target {line!r}")
        tfd = int(m[1])
        try:
            same = _target_ino(d.pid, tfd) == _line_ino(line)
        except OSError:
            same = False
        if not same:
            raise FdError(0, f"{d.where}: epoll target fd {tfd} is no longer open at that number")
        targets.append({"fd": tfd, "events": int(m[2], 16), "data": int(m[3], 16)})
    return {"targets": targets}


def _target_ino(pid: int, fd: int) -> int:
    return os.stat(f"/proc/{pid}/fd/{fd}").st_ino


def _line_ino(line: str) -> int:
    m = re.search(r"ino:([0-9a-f]+)", line)
    return int(m[1], 16) if m else -1


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    ts = entry.get("targets")
    if not isinstance(ts, list):
        _fail(f"{what}: epoll targets must be a list")
    for t in ts:
        if not isinstance(t, dict) or not all(isinstance(t.get(k), int) for k in ("fd", "events", "data")) \
                or not 0 <= t["fd"] <= 1 << 20:
            _fail(f"{what}: bad epoll target {t!r}")


def _open(r: RestoreFd) -> int:
    import select
    ep = select.epoll()
    try:
        return os.dup(ep.fileno())   # close-on-exec; the stand-in sets the dumped flag
    finally:
        ep.close()


def _after(entry: dict):
    return ("register", (entry["fd"], entry["targets"])) if entry["targets"] else None


def _register(args, fds):
    """In the stand-in, once its fds are installed: add each target under its own number."""
    epfd, targets = args
    for t in targets:
        fsys.epoll_add(epfd, t["fd"], t["events"], t["data"])
    return None, []


register(FdKind(name="epoll", matches=lambda t, m: t == "anon_inode:[eventpoll]", dump=_dump, open=_open,
                check=_check, after=_after, standin={"register": _register}, fields={"targets": F(LIST)}))
