"""Time namespaces (`unshare --time --monotonic N --boottime N --fork`, CLONE_NEWTIME): their
clock offsets.

A process in a time namespace of its own sees CLOCK_MONOTONIC and CLOCK_BOOTTIME moved by the
namespace's offsets (/proc/PID/timens_offsets). unshare(CLONE_NEWTIME) makes a namespace only the
caller's children enter (its `time_for_children`; `unshare --fork` is such a parent), and the
offsets can be written only before any process is in it. So restore makes each namespace in the
stand-in of the process that made it (the one whose children's namespace is not its own), or,
when no process of the tree has it so, in the first stand-in that is in it, which enters it with
setns; the others join it (setns gives a process both at once). The clocks never run backwards for
the tree: an offset is raised by what the host's clock lost since the dump (a restore after a
reboot); on the host that dumped, it is the one it had.

Refused before the stop (`check_tree`): a process in a namespace that a later process of the tree
made (its stand-in would have to enter it before it exists), and children's namespaces the
dumper is in.
"""

from __future__ import annotations

import errno
import os
import time

from engine import kernel

CLOCKS = {"monotonic": time.CLOCK_MONOTONIC, "boottime": time.CLOCK_BOOTTIME}
CLONE_NEWTIME = 0x80


class TimensError(OSError):
    """Time namespaces restore could not make (a one-line reason)."""


def ns_ino(pid, name: str = "time") -> int | None:
    """The inode of `pid`'s time namespace (`name` "time_for_children": its children's)."""
    try:
        return os.stat(f"/proc/{pid}/ns/{name}").st_ino
    except FileNotFoundError:
        return None   # (a kernel without time namespaces, before 5.6)


def offsets(pid) -> dict[str, list[int]]:
    """{clock: [seconds, nanoseconds]} of `pid`'s time namespace."""
    out = {}
    with open(f"/proc/{pid}/timens_offsets") as f:
        for line in f:
            name, sec, nsec = line.split()
            out[name] = [int(sec), int(nsec)]
    return {k: out.get(k, [0, 0]) for k in CLOCKS}


def host_clocks() -> dict[str, int]:
    """The initial time namespace's clocks (ns), whichever one we are in."""
    own = offsets("self") if os.path.exists("/proc/self/timens_offsets") else {k: [0, 0] for k in CLOCKS}
    return {k: time.clock_gettime_ns(c) - own[k][0] * 10**9 - own[k][1] for k, c in CLOCKS.items()}


def _inos(pid) -> tuple[int | None, int | None]:
    return ns_ino(pid, "time"), ns_ino(pid, "time_for_children")


def check_tree(pids: list[int], mine: int | None) -> None:
    """TimensError for what restore could not make of the time namespaces of `pids` (tree order:
    parents first, as restore makes them); `mine`: our own namespace's inode."""
    seen: set[int] = set()
    for pid in pids:
        now, later = _inos(pid)
        if later != now and later == mine:
            raise TimensError(errno.EOPNOTSUPP, f"process {pid}: its children would enter the dumper's time "
                                                "namespace, not its own, which is not restored")
        if later != now:
            if later in seen:
                raise TimensError(errno.EOPNOTSUPP, f"process {pid} made a time namespace that a process "
                                                    "restored before it is in (one that joined it with setns), "
                                                    "which is not restored")
        seen.add(now)
        seen.add(later)


def precheck(pids: list[int]) -> None:
    """`check_tree` on the running tree."""
    try:
        check_tree(pids, ns_ino("self"))
    except FileNotFoundError:
        pass   # (a process gone meanwhile: dump tells)


def names(pids: list[int], mine: int | None) -> dict[int, str]:
    """{inode: image id} of the time namespaces of `pids` (tree order) but ours (`mine`), each
    process's own then its children's: time-N in the order `read` meets them."""
    out: dict[int, str] = {}
    for pid in pids:
        now, later = _inos(pid)
        if now is not None and now != mine:
            out.setdefault(now, f"time-{len(out) + 1}")
        if later != now:
            out.setdefault(later, f"time-{len(out) + 1}")
    return out


def read(pid: int, mine: int | None, names: dict[int, str]) -> dict:
    """{"timens": record} of `pid`'s time namespace when it is not ours (`mine`: its inode), and
    {"timens_children": record} of its children's when that is not its own; `names` gives each
    namespace seen its id (time-N), in the order they were met."""
    out = {}
    now, later = _inos(pid)
    if now is not None and now != mine:
        out["timens"] = {"id": names.setdefault(now, f"time-{len(names) + 1}"), "offsets": offsets(pid),
                         "at": host_clocks()}
    if later != now:
        out["timens_children"] = {"id": names.setdefault(later, f"time-{len(names) + 1}"),
                                  "offsets": _children_offsets(pid), "at": host_clocks()}
    return out


def _children_offsets(pid: int) -> dict[str, list[int]]:
    """The offsets of `pid`'s children's namespace, which no file of `pid` shows: read in a child
    forked into it (engine/forkrun.py; entering freezes them, as the first child of `pid` did or
    will: `unshare --time` writes them before it runs anything)."""
    from engine import forkrun
    fd = os.open(f"/proc/{pid}/ns/time_for_children", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return forkrun.run(_offsets_in, fd)
    finally:
        os.close(fd)


def _offsets_in(fd: int) -> dict[str, list[int]]:
    kernel.setns(fd, CLONE_NEWTIME)
    return offsets("self")


def offsets_now(rec: dict) -> dict[str, list[int]]:
    """The offsets to give namespace `rec` now: its own, raised by what a host clock lost since `at`."""
    now = host_clocks()
    out = {}
    for k in CLOCKS:
        sec, nsec = rec["offsets"][k]
        total = sec * 10**9 + nsec + max(0, rec["at"][k] - now[k])
        out[k] = [total // 10**9, total % 10**9]
    return out


def make(offs: dict[str, list[int]], enter: bool) -> None:
    """Make a time namespace with offsets `offs` for our children, and `enter` it ourselves (a
    single-threaded caller)."""
    kernel.unshare(CLONE_NEWTIME)
    fd = os.open("/proc/self/timens_offsets", os.O_WRONLY | os.O_CLOEXEC)
    try:
        # (one write: the kernel takes every line of it, or none)
        os.write(fd, "".join(f"{k} {s} {n}\n" for k, (s, n) in offs.items()).encode())
    finally:
        os.close(fd)
    if not enter:
        return
    fd = os.open("/proc/self/ns/time_for_children", os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.setns(fd, CLONE_NEWTIME)
    finally:
        os.close(fd)
