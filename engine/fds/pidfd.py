"""pidfds: an fd naming a process of the tree (LXC's monitor keeps one on the container's init),
opened again on that process's stand-in.

Dump reads the process from fdinfo (`Pid:`, in the dumper's pid namespace, as the image names
processes); restore opens a pidfd of the stand-in of that image process, with PIDFD_NONBLOCK when
the fd had O_NONBLOCK. A pidfd of a process outside the tree, or of one that exited, is refused
before the stop.
"""

from __future__ import annotations

import errno
import os

from engine.imageformat import INT, MAX_PID, F, rng
from engine.fds import FdError, FdKind, RestoreFd, register


def _matches(target: str, mode: int) -> bool:
    return target == "anon_inode:[pidfd]"


def _pid(d) -> int:
    """The tree process the pidfd names, or FdError (one line)."""
    pid = int(d.info().get("Pid", ["-1"])[0])
    if pid <= 0:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a pidfd of a process that exited (or of another pid "
                                        "namespace): not supported")
    if pid not in (d.scratch.get("pids") or ()):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a pidfd of process {pid}, which is not in the dumped "
                                        "tree: not supported")
    return pid


def _precheck(d) -> None:
    _pid(d)


def _dump(d) -> dict:
    return {"pid": _pid(d)}


def _open(r: RestoreFd) -> int:
    e = r.entry
    host = r.pid_of(e["pid"]) if r.pid_of is not None else None
    if host is None:
        raise FdError(errno.EINVAL, f"{r.where}: names process {e['pid']}, which is not in the image")
    return os.pidfd_open(host, e["flags"] & os.O_NONBLOCK)   # PIDFD_NONBLOCK is O_NONBLOCK


register(FdKind(name="pidfd", matches=_matches, dump=_dump, open=_open, precheck=_precheck,
                fields={"pid": F(INT, rule=rng(1, MAX_PID))},
                refs=lambda e: [("process", e["pid"], f"a pidfd of process {e['pid']}")]))
