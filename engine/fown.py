"""Signal-driven I/O of an open file description: O_ASYNC, its owner (F_SETOWN) and signal (F_SETSIG).

nginx sets O_ASYNC (FIOASYNC) and F_SETOWN on its channels. An owner matters without O_ASYNC too:
it gets a socket's SIGURG and a lease's break signal (F_SETLEASE makes its taker the owner of a
description without one), so every fd's owner and signal are kept. The owner and the signal belong to the
open file description, not to the fd, and /proc shows neither: dump reads them on a copy of the
fd (pidfd_getfd) as fcntl F_GETOWN_EX / F_GETSIG give them in the dumper's pid namespace, where the
image names processes. An owner is kept as a process of the tree (F_OWNER_PID, or F_OWNER_TID of
a process's main thread: a stand-in's other threads are made last, after the owner is set), a
process group (F_OWNER_PGRP) as its leader, a process of the tree whose group it is ("async_pgrp":
restore gives the restored leader's pid, its group's id); a group without its leader in the tree or
with a living member outside it (restored, its signals would reach the tree's members only),
another thread or a process outside the tree is refused before the stop (an owner that exited is none:
F_GETOWN_EX names no owner without a task). Restore sets the owner on the
stand-in of that process (its pid as the restorer sees it) after the signal and O_ASYNC, once
every fd of the tree is made and restore's own copies are closed (the release of a pipe's last
writer signals its readers' owners: a stand-in would get SIGIO, which kills it, or the image's
SIGSTOP, which hangs the restore), before any lease (which keeps an owner it finds): F_SETFL
calls the file's fasync hook only when the flag changes (open(2) sets the bit without it), which is
what registers the file for SIGIO on sockets, pipes and ttys; a tty's hook gives a description
without owner one (its foreground process group, or the caller: the restorer), which the image's
owner, or none, replaces. The kernel keeps the number of the fd that turned O_ASYNC on and sends it
as si_fd with a signal set by F_SETSIG: restore turns it on through the tree's fd number
(`register_async`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

O_ASYNC = getattr(os, "O_ASYNC", 0o20000)
O_PATH = getattr(os, "O_PATH", 0o10000000)
F_SETSIG, F_GETSIG = 10, 11
F_SETOWN_EX, F_GETOWN_EX = 15, 16
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
MAX_SIG = 64   # _NSIG


class _OwnerEx(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("pid", ctypes.c_int)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fcntl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _fcntl_ptr(fd: int, cmd: int, arg: _OwnerEx) -> None:
    if _libc.fcntl(fd, cmd, ctypes.byref(arg)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def read(fd: int) -> tuple[int, int, int]:
    """(owner type, owner id in our pid namespace (0: none), signal (0: SIGIO)) of our fd `fd`."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & O_PATH:
        return F_OWNER_PID, 0, 0   # (fcntl refuses both on an O_PATH description, which has neither)
    own = _OwnerEx()
    _fcntl_ptr(fd, F_GETOWN_EX, own)
    return own.type, own.pid, fcntl.fcntl(fd, F_GETSIG)


def entry_fields(fd: int, pids, where: str) -> dict:
    """The image fields of the owner and signal of our copy `fd` of a dumped fd ({} when it has
    neither): {"async_owner": image pid, "async_tid": True?, "async_signal": N?}; an owner the image
    cannot name raises engine.fds.FdError (one line), `pids` being the tree's processes."""
    from engine.fds import FdError
    kind, who, sig = read(fd)
    out: dict = {}
    if kind == F_OWNER_PGRP and who:
        if who not in pids or _pgid_of(who) != who:
            raise FdError(errno.EOPNOTSUPP, f"{where}: process group {who} as its signal owner (F_SETOWN -pgid), "
                                            "whose leader is not a process of the dumped tree: not supported")
        outsider = _member_outside(who, pids)
        if outsider is not None:
            raise FdError(errno.EOPNOTSUPP, f"{where}: process group {who} as its signal owner (F_SETOWN -pgid), "
                                            f"which process {outsider} outside the dumped tree is in too (restored, "
                                            "the signals would reach the tree's members only): not supported; "
                                            "dump a tree holding every process of that group")
        return {"async_owner": who, "async_pgrp": True, **({"async_signal": sig} if sig else {})}
    if who:
        if who not in pids:
            leader = _leader_of(who)
            if leader in pids:
                raise FdError(errno.EOPNOTSUPP, f"{where}: thread {who} of process {leader} as its signal owner "
                                                "(F_SETOWN): restored threads get other tids (only a process or "
                                                "its main thread is kept as an owner): not supported")
            what = "thread" if kind == F_OWNER_TID else "process"
            raise FdError(errno.EOPNOTSUPP, f"{where}: {what} {who} as its signal owner (F_SETOWN), "
                                            "which is not a process of the dumped tree: not supported")
        out["async_owner"] = who
        if kind == F_OWNER_TID:
            out["async_tid"] = True
    if sig:
        out["async_signal"] = sig
    return out


def _pgid_of(pid: int) -> int | None:
    """The process group of process `pid` in our pid namespace; None when gone."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _member_outside(pgid: int, pids) -> int | None:
    """A living process of process group `pgid` (our pid namespace) that is not in `pids`, or None."""
    from engine import procstat
    inside = set(pids)
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in inside:
            continue
        try:
            f = procstat.fields(name)
        except OSError:
            continue   # (gone meanwhile)
        if int(f[procstat.PGRP]) == pgid and f[procstat.STATE] not in procstat.DEAD:
            return int(name)   # (a zombie gets no signal: none lost)
    return None


def _leader_of(tid: int) -> int | None:
    """The process (thread group) thread `tid` belongs to in our pid namespace; None when gone."""
    from engine import kernel
    try:
        return int(kernel.proc_status(tid, ("Tgid",))["Tgid"])
    except (OSError, KeyError, ValueError):
        return None


def fields_of(pidfd: int, fd: int, pids, where: str) -> dict:
    """`entry_fields` of fd `fd` of the process of `pidfd`, read on a copy of it (nothing changed):
    before the stop, to refuse what dump would; at dump, for an fd no kind reads (an --external file's)."""
    from engine.fds import sys as fsys
    c = fsys.pidfd_getfd(pidfd, fd)
    try:
        return entry_fields(c, pids, where)
    finally:
        os.close(c)


def needed(entry: dict) -> bool:
    """Whether image fd `entry` has a signal owner, a signal or O_ASYNC to restore."""
    return bool(entry["flags"] & O_ASYNC) or any(k in entry for k in ("async_owner", "async_signal"))


def restore(fd: int, entry: dict, pid_of) -> None:
    """Give our fd `fd`, a new description made for image fd `entry`, its signal, O_ASYNC, then its
    owner; `pid_of(image pid)` is the restored process's pid as we see it (None: not restored)."""
    o_async = entry["flags"] & O_ASYNC
    if not needed(entry):
        return
    host = 0
    if "async_owner" in entry:
        host = pid_of(entry["async_owner"]) if pid_of is not None else None
        if host is None:
            raise OSError(errno.EINVAL, f"its signal owner {entry['async_owner']} is no process of the image")
    fcntl.fcntl(fd, F_SETSIG, entry.get("async_signal", 0))
    if o_async:
        register_async(fd, entry["fd"])
    # The owner last: a tty's fasync hook makes its foreground group, or us, the owner of one without.
    kind = F_OWNER_TID if entry.get("async_tid") else F_OWNER_PGRP if entry.get("async_pgrp") else F_OWNER_PID
    _fcntl_ptr(fd, F_SETOWN_EX, _OwnerEx(kind, host))


def register_async(fd: int, number: int) -> None:
    """Register our description `fd` for signal-driven I/O (O_ASYNC) through fd number `number`.

    The kernel keeps the number of the fd whose F_SETFL turned O_ASYNC on and sends it as si_fd
    of the owner's signal when one is set (F_SETSIG): it must be the tree's fd number, not ours.
    A forked child, whose fd table is a throwaway copy, puts the description at that number and
    turns the flag off and on there (off first: a bit open(2) set without registering must change
    to reach the file's fasync hook). A description several fds share gets the number of the one
    it was made for: which fd turned the flag on last, /proc does not show. OSError on failure."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pid = os.fork()
    if pid == 0:   # (nothing but syscalls here, then _exit: no Python clean-up in the copy)
        code = 0
        try:
            if number >= soft:
                # (the validator bounds fd numbers by the hard limit only: the copy's own to raise)
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            if fd != number:
                os.dup2(fd, number, inheritable=False)
            fl = fcntl.fcntl(number, fcntl.F_GETFL)
            fcntl.fcntl(number, fcntl.F_SETFL, fl & ~O_ASYNC)
            fcntl.fcntl(number, fcntl.F_SETFL, fl | O_ASYNC)
        except OSError as e:
            code = e.errno if e.errno and e.errno < 255 else 255
        except BaseException:
            code = 255
        os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        err = code if 0 < code < 255 else errno.EIO
        raise OSError(err, f"O_ASYNC through fd {number}: {os.strerror(err)}")


def owner_text(fd: int, flags: int) -> str:
    """The owner and signal of our fd `fd` (status `flags`) as zdtm's snapshot compares them
    ("async-owner=pid:N sig=S"; '' for one without O_ASYNC, owner or signal)."""
    kind, who, sig = read(fd)
    if not who:   # (the type of no owner means nothing: F_SETOWN of a process since gone kept one)
        return f"async-owner=none sig={sig}" if sig or flags & O_ASYNC else ""
    return f"async-owner={ {F_OWNER_TID: 'tid', F_OWNER_PID: 'pid', F_OWNER_PGRP: 'pgrp'}.get(kind, kind)}:{who} sig={sig}"
