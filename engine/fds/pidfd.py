"""pidfds: an fd naming a process of the tree (LXC's monitor keeps one on the container's init),
opened again on that process's stand-in.

Dump reads the process from fdinfo (`Pid:`, in the dumper's pid namespace, as the image names
processes); restore opens a pidfd of the stand-in of that image process, with PIDFD_NONBLOCK when
the fd had O_NONBLOCK. A pidfd of a process that exited and was reaped (fdinfo `Pid: -1`, CRIU's
pidfd_dead) names no process: restore opens it on a child of its own that exits and is reaped once
every process holds its fds, one child for each dead process (pidfds on one share an inode, which
tells them apart; before pidfs, Linux 6.9, every pidfd is the one anonymous inode, and the dead
ones come back as pidfds of one child, which is all such a kernel shows of them). A pidfd of a process outside the tree is refused before the stop.
"""

from __future__ import annotations

import errno
import os
from engine import rx

from engine.imageformat import INT, MAX_PID, STR, F, pattern, rng
from engine.fds import FdError, FdKind, RestoreFd, register


_DEAD = rx.compile(r"^[0-9]{1,20}\Z")


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if ("pid" in entry) == ("dead" in entry):
        _fail(f"{what}: a pidfd names a process ('pid') or an exited one ('dead'), one of them")


def _matches(target: str, mode: int) -> bool:
    return target == "anon_inode:[pidfd]"


def _pid(d) -> int:
    """The tree process the pidfd names, -1 for one that exited, or FdError (one line)."""
    pid = int(d.info().get("Pid", ["0"])[0])
    if pid == -1:
        return pid
    if pid == 0:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a pidfd of a process of another pid namespace, outside "
                                        "the dumped tree: not supported")
    if pid not in (d.scratch.get("pids") or ()):
        tgid = _tgid(pid)
        if tgid in (d.scratch.get("pids") or ()):
            # (PIDFD_THREAD: restore makes a stand-in's threads, not pidfds of them)
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a pidfd of thread {pid} of process {tgid} of the tree "
                                            "(PIDFD_THREAD): not supported; close it before the dump")
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a pidfd of process {pid}, which is not in the dumped "
                                        "tree: not supported")
    return pid


def _tgid(tid: int) -> int | None:
    """The process thread `tid` belongs to, or None (gone, or not a thread we see)."""
    try:
        with open(f"/proc/{tid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Tgid:")), None)
    except (OSError, ValueError):
        return None


def _precheck(d) -> None:
    _pid(d)


def _dump(d) -> dict:
    pid = _pid(d)
    if pid == -1:
        return {"dead": str(os.stat(f"/proc/{d.pid}/fd/{d.fd}").st_ino)}
    return {"pid": pid}


def _dead_child(r: RestoreFd, key: str) -> int:
    """The pid of restore's child standing for the dead process `key`: it waits on a pipe (so that
    it exists until every pidfd on it is open, whatever SIGCHLD's disposition) and is reaped by a
    late step."""
    state = r.state.get(("pidfd-dead", key))
    if state is not None:
        return state
    rd, wr = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:   # (holds nothing of restore's but its end of the pipe)
        try:
            os.closerange(0, rd)
            os.closerange(rd + 1, 1 << 20)
            os.read(rd, 1)
        finally:
            os._exit(0)
    os.close(rd)
    r.keep.append(wr)   # (closed with the other kept fds if restore fails: the child exits)

    def reap():
        os.close(r.keep.pop(r.keep.index(wr)))
        os.waitpid(pid, 0)

    r.late.append((f"{r.where}: the exited process of a pidfd", reap))
    r.state[("pidfd-dead", key)] = pid
    return pid


def _open(r: RestoreFd) -> int:
    e = r.entry
    if "dead" in e:
        return os.pidfd_open(_dead_child(r, e["dead"]), e["flags"] & os.O_NONBLOCK)
    host = r.pid_of(e["pid"]) if r.pid_of is not None else None
    if host is None:
        raise FdError(errno.EINVAL, f"{r.where}: names process {e['pid']}, which is not in the image")
    return os.pidfd_open(host, e["flags"] & os.O_NONBLOCK)   # PIDFD_NONBLOCK is O_NONBLOCK


register(FdKind(name="pidfd", matches=_matches, dump=_dump, open=_open, precheck=_precheck,
                check=_check, forks=lambda e: e.get("dead"), fields={"pid": F(INT, required=False, rule=rng(1, MAX_PID)),
                                      "dead": F(STR, required=False, rule=pattern(_DEAD, "an inode number"))},
                # (an exited process's pidfd names no process of the image)
                refs=lambda e: [("process", e["pid"], f"a pidfd of process {e['pid']}")] if "pid" in e else []))
