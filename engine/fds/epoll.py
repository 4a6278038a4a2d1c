"""epoll: its registered targets (fd number, events, data word), registered again by the stand-in.

A target is registered under the fd number it had in the owner's table
(fdinfo `tfd`), so the stand-in does EPOLL_CTL_ADD itself once all its fds are
installed. A target whose fd number was closed since (CRIU's epoll, epoll01: a
dup registered, then closed) but whose file the owner still holds at another
number (`via`, found with kcmp KCMP_EPOLL_TFD) is registered as it was made: the
stand-in puts that file at the number for the call. One the owner holds at no
number cannot be named again: refused at dump, and before the tree is stopped.

A one-shot target (EPOLLONESHOT) that fired and was not armed again (EPOLL_CTL_MOD) keeps only
its flags: epoll_ctl cannot register it so, so the stand-in registers it armed for every event and
takes its one event at once, which disarms it as it was; registered first, alone able to report.
That needs its file to have something to report: one with nothing is refused at dump.

An edge-triggered target (EPOLLET) whose file is ready but whose edge the program took already
reports nothing until its file changes; registered again, it reports at once (epoll_ctl queues a
ready file). An epoll with such a target that had nothing to report at dump (a poll of it: no
POLLIN; it takes nothing) is `quiet`: the stand-in takes, once, each event its targets report
after their registration, as the program had (a level-triggered target's comes back at once).
So is an epoll in flight on a socket pair whose targets are that pair's ends (engine/fds/unix_queue.py):
its events are taken once the pair's queues and shutdowns are all made (`settle`), which would
otherwise be new edges.
"""

from __future__ import annotations

import os
from engine import rx

from engine.imageformat import BOOL, LIST, F
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.fds import sys as fsys

_TFD = rx.compile(r"^(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)")
_ONESHOT = 1 << 30
_ET = 1 << 31
# The bits a one-shot item keeps once it fired (the kernel's EP_PRIVATE_BITS: EPOLLWAKEUP,
# EPOLLONESHOT, EPOLLET, EPOLLEXCLUSIVE); every event a file may report (IN, PRI, OUT, RDNORM,
# RDBAND, WRNORM, WRBAND, MSG, RDHUP; ERR and HUP come with any registration).
_PRIVATE = 0xF << 28
_ANY = 0x1 | 0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000


def _disarmed(events: int) -> bool:
    """A one-shot item that fired and was not armed again."""
    return bool(events & _ONESHOT) and not events & ~_PRIVATE


def _dump(d) -> dict:
    targets = _targets(d)
    if quiet_with_edges(d.copy(), targets):
        return {"targets": targets, "quiet": True}
    return {"targets": targets}


def quiet_with_edges(fd: int, targets: list[dict]) -> bool:
    """Whether epoll `fd` (our copy), with `targets`, is `quiet`: an edge-triggered target and
    nothing to report."""
    return any(t["events"] & _ET for t in targets) and _quiet(fd)


def settle(pending: list[tuple[int, int]]) -> None:
    """Take once each event the registrations of quiet epolls queued ((our copy, its targets'
    count) each: an epoll in flight, once its pair is all made), as `_register` does."""
    for epfd, n in pending:
        for _ in range(n):
            if fsys.epoll_wait_one(epfd) is None:
                break


def _quiet(fd: int) -> bool:
    """Whether epoll `fd` has nothing to report (a poll of it, which takes no event)."""
    import select
    p = select.poll()
    p.register(fd, select.POLLIN)
    return not p.poll(0)


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
        if _disarmed(target["events"]) and not _reports(d, target.get("via", tfd)):
            raise FdError(0, f"{d.where}: epoll target fd {tfd} is a one-shot watch that fired and was not armed "
                             "again, and its file has nothing to report: restore could not disarm it again; dump "
                             "once the program armed it again (EPOLL_CTL_MOD)")
        targets.append(target)
    return targets


def _reports(d, fd: int) -> bool:
    """Whether fd `fd` of d's process has an event to report (what disarms a one-shot item)."""
    import select
    copy = fsys.pidfd_getfd(d.pidfd, fd)
    try:
        p = select.poll()
        p.register(copy, _ANY)
        return bool(p.poll(0))
    finally:
        os.close(copy)


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


_INO = rx.compile(r"ino:([0-9a-f]+)")


def _line_ino(line: str) -> int:
    m = _INO.search(line)
    return int(m[1], 16) if m else -1


MAX_INFLIGHT_TARGETS = 1024   # (an end of the pair under many numbers: the validator's bound too)


def inflight_targets(fd: int, what: str, selves) -> list[dict]:
    """The targets of an epoll in flight (our copy `fd`), each {fd, events, data, end}: only an end
    of the pair whose queue it waits on (`selves`, {socket inode: end} or the inodes alone) can be
    registered again (by the stand-in that makes the pair, its new end put at that number for the
    call: `arm_inflight`); any other target, or a one-shot one that fired, is refused."""
    targets = []
    with open(f"/proc/self/fdinfo/{fd}") as f:
        lines = [line.partition(":")[2].strip() for line in f if line.startswith("tfd:")]
    if len(lines) > MAX_INFLIGHT_TARGETS:
        raise FdError(0, f"{what}: an epoll in flight with {len(lines)} targets: more than {MAX_INFLIGHT_TARGETS} "
                         "is not supported")
    for line in lines:
        m = _TFD.match(line)
        if m is None:
            raise FdError(0, f"{what}: unreadable epoll target {line!r}")
        ino = _line_ino(line)
        if ino not in selves:
            raise FdError(0, f"{what}: an epoll in flight watching a file other than an end of the socket pair it "
                             f"waits on (its target fd {m[1]}): not supported; dump once the program received it")
        target = {"fd": int(m[1]), "events": int(m[2], 16), "data": int(m[3], 16)}
        if _disarmed(target["events"]):
            raise FdError(0, f"{what}: an epoll in flight with a one-shot target that fired (fd {m[1]}): not "
                             "supported; dump once the program received it")
        if isinstance(selves, dict):
            target["end"] = selves[ino]
        targets.append(target)
    return targets


def check_inflight_targets(ts, what: str) -> None:
    """The image validator's part for an epoll in flight's targets (`inflight_targets`)."""
    from engine.image import _fail
    if not isinstance(ts, list) or len(ts) > MAX_INFLIGHT_TARGETS:
        _fail(f"{what}: bad targets of an epoll in flight")
    for t in ts:
        if not isinstance(t, dict) or set(t) != {"fd", "events", "data", "end"} \
                or not all(type(t[k]) is int for k in t) or t["end"] not in (0, 1) \
                or not 0 <= t["fd"] <= 1 << 20 or not 0 <= t["events"] < 1 << 32 or not 0 <= t["data"] < 1 << 64 \
                or _disarmed(t["events"]):
            _fail(f"{what}: bad target of an epoll in flight {t!r}")


def arm_inflight(epfd: int, targets: list[dict], ends) -> None:
    """In the stand-in that makes a socket pair: register an epoll in flight's targets on the new
    pair's `ends` (fd numbers), each under the number it was registered under (the epoll itself
    moved off the numbers meanwhile: the stand-in got it at any number, maybe that one)."""
    import fcntl
    high = fcntl.fcntl(epfd, fcntl.F_DUPFD_CLOEXEC, 1024)
    try:
        _register_all(high, [{**t, "via": ends[t["end"]]} for t in targets])
    finally:
        os.close(high)


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
    return ("register", (entry["fd"], entry["targets"], bool(entry.get("quiet")))) if entry["targets"] else None


def _register(args, fds):
    """In the stand-in, once its fds are installed: add each target under its own number."""
    epfd, targets, quiet = args
    _register_all(epfd, targets)
    if quiet:
        # (nothing to report, as at dump: each event the registrations queued is taken once; a
        # level-triggered target's is queued again)
        settle([(epfd, len(targets))])
    return None, []


def _register_all(epfd: int, targets: list[dict]) -> None:
    """Register `targets` on epoll `epfd`, each under its own number (`via`: the file at that number
    for the call)."""
    for t in sorted(targets, key=lambda t: not _disarmed(t["events"])):   # (the disarmed ones first)
        if "via" not in t:
            _add(epfd, t["fd"], t)
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
            _add(epfd, n, t)
        finally:
            if saved is None:
                os.close(n)
            else:
                os.dup2(saved, n, inheritable=inheritable)
                os.close(saved)


def _add(epfd: int, n: int, t: dict) -> None:
    """Register target `t` at fd number `n`; a disarmed one-shot one is armed for every event, then
    fired (the only item that can report: the others registered so far are disarmed ones)."""
    if not _disarmed(t["events"]):
        fsys.epoll_add(epfd, n, t["events"], t["data"])
        return
    fsys.epoll_add(epfd, n, t["events"] | _ANY, t["data"])
    if fsys.epoll_wait_one(epfd) != t["data"]:
        raise FdError(0, f"epoll fd {epfd}: one-shot target fd {n} has nothing to report: it could not be disarmed "
                         "as it was at dump")


register(FdKind(name="epoll", matches=lambda t, m: t == "anon_inode:[eventpoll]", dump=_dump, open=_open,
                check=_check, after=_after, standin={"register": _register},
                fields={"targets": F(LIST), "quiet": F(BOOL, required=False)},
                precheck=_precheck))
