"""Files of /proc/N/ whose process N is gone (CRIU's remap_dead_pid, remap_dead_pid_root,
unhashed_proc): an fd or a cwd on /proc/N/mountinfo or on /proc/N itself (which then shows
"(deleted)") after N exited. Restore gives the stand-ins other pid numbers, so such a path would
name nothing, or another process: it is opened while a child of the restorer has number N in that
proc mount's pid namespace (kernel.hold_pid), which exits right after: the fd (or the cwd made
from it) is on a gone process's file again, under the same name.

A file of /proc/N/ of a live process of the tree (CRIU's fanotify00 keeps /proc/self/fdinfo/3
open) is reopened as /proc/M/... of the process N became, M its number in that proc mount's pid
namespace (`pid_in`): the same file of the same process, under the number it has now."""

from __future__ import annotations

import errno
import os
from engine import rx

from engine.kernel import DELETED


_PID_DIR = rx.compile(r"/[0-9]+")


def gone_pid_dir(target: str, m) -> bool:
    """Is `target` (a path ending in " (deleted)") the /proc/N directory of a process that is gone,
    on proc mount `m` (a mountinfo Mount) of the whole proc?"""
    if m is None or m.fstype != "proc" or m.root != "/" or not target.endswith(DELETED):
        return False
    top = m.mountpoint.rstrip("/")
    return target.startswith(top + "/") and bool(_PID_DIR.fullmatch(target[len(top): -len(DELETED)]))


def reopen(open_at, proc: int, mnt: int, path: str, n: int, flags: int) -> int:
    """Open `path` (/N/... relative to proc mount `mnt`'s root; open_at(mnt, path, flags) opens on the
    restored mount) while pid N is a child of ours (`hold`)."""
    return hold(open_at, proc, mnt, n, lambda: open_at(mnt, path, flags))


def hold(open_at, proc: int, mnt: int, n: int, fn):
    """fn() while pid N of proc mount `mnt`'s pid namespace (its init's) is a child of ours, which
    exits right after. `proc`: an fd on the host's /proc. OSError EEXIST, said plainly, when N is
    taken there. (A stand-in enters a cwd of /proc/N within fn: the kernel refuses to enter
    the directory of a gone process, ESRCH, but one stays in it after the process is gone.)"""
    from engine import kernel
    at = open_at(mnt, "/1/ns", os.O_PATH | os.O_DIRECTORY)
    try:
        ns = os.open("pid", os.O_RDONLY | os.O_CLOEXEC, dir_fd=at)
    finally:
        os.close(at)
    try:
        return kernel.hold_pid(ns, n, proc, fn)
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise OSError(errno.EEXIST, f"a file of process {n}'s /proc directory, whose number a process of the "
                                        "restored tree has") from None
        raise
    finally:
        os.close(ns)


def _nspid(status_fd: int) -> list[int]:
    # (bytes: the restorer may stand where no codec module can be imported any more)
    with os.fdopen(status_fd, "rb") as f:
        for line in f:
            if line.startswith(b"NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []


def pid_in(view: int, host_pid: int, hostproc: int) -> int | None:
    """The number of process `host_pid` in the pid namespace of the proc mount `view` (an O_PATH fd
    on its root), None when that namespace does not see it. `hostproc`: an fd on the host's /proc.
    The process is the one of number n there whose own pid namespace and number in it are the
    host's: one number a namespace, so one process."""
    try:
        host = _nspid(os.open(f"{host_pid}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=hostproc))
        own = os.stat(f"{host_pid}/ns/pid", dir_fd=hostproc).st_ino
    except OSError:
        return None
    for i, n in enumerate(host):
        try:
            seen = _nspid(os.open(f"{n}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=view))
            if len(seen) == len(host) - i and seen[-1] == host[-1] and \
                    os.stat(f"{n}/ns/pid", dir_fd=view).st_ino == own:
                return n
        except OSError:
            continue
    return None
