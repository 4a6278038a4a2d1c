"""epoll: its registered targets (fd number, events, data word), registered again by the stand-in.

A target is registered under the fd number it had in the owner's table
(fdinfo `tfd`), so the stand-in does EPOLL_CTL_ADD itself once all its fds are
installed. A target whose fd number was closed since (CRIU's epoll, epoll01: a
dup registered, then closed) but whose file the owner still holds at another
number (`via`, found with kcmp KCMP_EPOLL_TFD) is registered as it was made: the
stand-in puts that file at the number for the call. One the owner holds at no
number cannot be named again: refused at dump, and before the tree is stopped.
"""

from __future__ import annotations

import os
import re

from engine.imageformat import LIST, F
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.fds import sys as fsys

_TFD = re.compile(r"^(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)")


def _dump(d) -> dict:
    return {"targets": _targets(d)}


def _precheck(d) -> None:
    """Before the tree is stopped: the targets as `_dump` reads them (its refusal of a target the
    process holds at no number). The process runs: a target it closed while we looked (epoll drops
    it with its file) is refused only when a second look finds it too."""
    try:
        _targets(d)
    except FdError:
        _targets(d)


def _targets(d) -> list[dict]:
    """Each target of epoll fd `d`: its number, events and data word, and `via` (another number
    the process holds its file at) when that number was closed since; refused when none is."""
    targets = []
    seen: dict[int, int] = {}   # tfd -> items with that number so far (kcmp's toff: fdinfo and kcmp
                                # both walk the epoll's items in its tree's order)
    for line in d.info().get("tfd", []):
        m = _TFD.match(line)
        if m is None:
            raise FdError(0, f"{d.where}: unreadable epoll target {line!r}")
        tfd = int(m[1])
        toff = seen.get(tfd, 0)
        seen[tfd] = toff + 1
        try:
            same = _target_ino(d.pid, tfd) == _line_ino(line)
        except OSError:
            same = False
        target = {"fd": tfd, "events": int(m[2], 16), "data": int(m[3], 16)}
        if not same:
            via = _holder(d, tfd, toff, _line_ino(line))
            if via is None:
                raise FdError(0, f"{d.where}: epoll target fd {tfd} is no longer open at that number, and the "
                                 "process holds its file at no other")
            target["via"] = via
        targets.append(target)
    return targets


def _holder(d, tfd: int, toff: int, ino: int) -> int | None:
    """Another fd of the process that is the file epoll `d` watches as (the `toff`th) closed target
    `tfd` (several files may have been registered under one number, each closed since), or None."""
    for name in sorted(os.listdir(f"/proc/{d.pid}/fd"), key=int):
        fd = int(name)
        try:
            if fd != tfd and _target_ino(d.pid, fd) == ino and fsys.epoll_target_is(d.pid, fd, d.fd, tfd, toff):
                return fd
        except OSError:
            continue
    return None


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
                or not 0 <= t["fd"] <= 1 << 20 or set(t) - {"fd", "events", "data", "via"} \
                or ("via" in t and (type(t["via"]) is not int or not 0 <= t["via"] <= 1 << 20 or t["via"] == t["fd"])):
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
        if "via" not in t:
            fsys.epoll_add(epfd, t["fd"], t["events"], t["data"])
            continue
        # The file at `via` goes to the number it was registered under, for the call only; what
        # holds that number now (another file: the number was reused) steps aside meanwhile.
        import fcntl
        n = t["fd"]
        try:
            saved = fcntl.fcntl(n, fcntl.F_DUPFD_CLOEXEC, 1024)
            inheritable = os.get_inheritable(n)
        except OSError:
            saved = None
        os.dup2(t["via"], n, inheritable=False)
        try:
            fsys.epoll_add(epfd, n, t["events"], t["data"])
        finally:
            if saved is None:
                os.close(n)
            else:
                os.dup2(saved, n, inheritable=inheritable)
                os.close(saved)
    return None, []


register(FdKind(name="epoll", matches=lambda t, m: t == "anon_inode:[eventpoll]", dump=_dump, open=_open,
                check=_check, after=_after, standin={"register": _register}, fields={"targets": F(LIST)},
                precheck=_precheck))
