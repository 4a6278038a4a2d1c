"""Controlling terminals: every process of the tree that had one has it again after restore.

The kernel's rules (drivers/tty/tty_jobctrl.c): a process's controlling terminal is inherited at
fork; only a session leader that has none takes one (TIOCSCTTY, or an open without O_NOCTTY);
setsid() leaves it; when the leader leaves its terminal (TIOCNOTTY, exit) or the terminal hangs up,
every process of its session loses it. So a member of a session has its leader's terminal, or none
(it, or an ancestor of it in the session, was forked before the leader took the terminal).

A leader's terminal is made again through the fd it holds on it (/dev/tty, or the pty slave that
is its terminal: engine/fds/pty.py), or, when it holds none (its stdio sent elsewhere, the terminal
kept), through the slave's node on a devpts mount of its namespace (process "ctty_node", the
pty's master held by a process of the tree: the pty is made by restore). Dump marks each member
that has the terminal (process "ctty").
Stand-ins are forked before any terminal exists, so the stand-ins of those members, and of their
descendants, are forked late (`Plan.late`), once every mount exists: each leader takes its terminal
first (`Plan.takes`, before its late children are forked), then they are forked by their parents
in order and inherit it, as the processes did.

Refused before the tree is stopped (`refusal`; the image checker refuses the same, `plan`): a process
whose terminal is that of a session led outside the tree (the terminal `mntcr dump` runs in: restore
gives no terminal it did not make), a leader whose terminal would not be made again (a pty whose
master no process of the tree holds, or no pty, and it holds no /dev/tty), a member whose parent has
not the terminal (it could inherit it from nobody), and a process that would inherit a terminal it
had not (a member that left it with TIOCNOTTY, forked late).
"""

from __future__ import annotations

import os
import stat
from engine import procstat

from engine import records

# late   the pids whose stand-ins are forked once their leaders took their terminals, parents first
# takes  the leaders that take their terminal before any late stand-in is forked from them
# problem   (pid, why) of the first process whose terminal cannot be made, or None
Plan = records.named_tuple("Plan", "late takes problem", __name__,
                          "Which stand-ins are forked late and which leaders take their terminal first (`plan`).")


def tty_nr(pid: int) -> int:
    """The device of `pid`'s controlling terminal (/proc/PID/stat tty_nr; 0: none)."""
    return int(procstat.fields(pid)[procstat.TTY_NR])


def device(nr: int) -> tuple[int, int]:
    """(major, minor) of a tty_nr."""
    return (nr >> 8) & 0xFFF, (nr & 0xFF) | ((nr >> 12) & 0xFFF00)


def leader_takes(p: dict) -> bool:
    """Does image process `p` take its terminal back: through an fd it holds (engine/fds/pty.py), or
    through its node (`ctty_node`: a leader that holds no fd on it)?"""
    return "ctty_node" in p or any((f.get("kind") == "ctty" and "tty" in f)
                                   or (f.get("kind") == "pty" and f.get("ctty") is True) for f in p.get("fds") or ())


def node_of(pid: int, fdtable, place, mounts) -> dict | None:
    """For leader `pid` that holds no fd on its terminal, a pty: where restore opens the terminal's
    slave to make it its terminal again ({mnt, path, obj}: a node on a devpts mount of its namespace,
    the pty object), found as for its /dev/tty (engine/fds/pty.py); `ptmx` is added by `record`.
    None when it has no terminal or it is no pty (refused before the stop)."""
    nr = tty_nr(pid)
    if not nr:
        return None   # (no terminal, the common case: pty.py, termios and select stay unloaded)
    from engine import fds, kernel
    from engine.fds import pty
    index = pty.number_of(*device(nr))
    if index is None:
        return None
    d = fds.DumpFd(pid=pid, fd=-1, target="/dev/tty", mode=stat.S_IFCHR, flags=0, pos=0,
                   pidfd=kernel.pidfd_open(pid), objects=fdtable.objects, scratch=fdtable.scratch, place=place,
                   mounts=list(mounts))
    try:
        got = pty.ctty_node(d, index)
    except fds.FdError as e:
        raise fds.FdError(e.errno, f"process {pid} leads its session with pty {index} as its controlling "
                                   "terminal and holds no fd on it, and no devpts mount of its namespace shows "
                                   "that pty: not supported") from None
    finally:
        os.close(d.pidfd)
    return {**got["tty"], "obj": got["obj"]}


def plan(procs: list[dict]) -> Plan:
    """The Plan for image processes `procs` (parents first; each with "sid", a member with the
    terminal with "ctty", a leader that takes its terminal with such an fd: `leader_takes`)."""
    by_pid = {p["pid"]: p for p in procs}
    has: dict[int, bool] = {}   # the stand-in has the terminal once forked (and its leader took it)
    late: list[int] = []
    takes: list[int] = []
    first: dict[int, int] = {}   # process group -> its first process, in order (engine/sessions.py joins through it)
    for p in procs:
        pid, sid = p["pid"], p.get("sid")
        group = p.get("pgid")
        if group is not None:
            first.setdefault(group, pid)
        parent = by_pid.get(p.get("ppid")) if p is not procs[0] else None
        if sid == pid:
            has[pid] = leader_takes(p)
            if has[pid]:
                takes.append(pid)
            if p.get("ctty"):
                return Plan(late, takes, (pid, "leader"))
            if parent is not None and parent["pid"] in late:
                if not _same_namespaces(p, parent):
                    return Plan(late, takes, (pid, "namespaces"))
                late.append(pid)
            continue
        wants = bool(p.get("ctty"))
        if not wants and any(f.get("kind") == "ctty" and "tty" in f for f in p.get("fds") or ()):
            return Plan(late, takes, (pid, "member"))   # (/dev/tty of a member without the terminal)
        if parent is None:
            if wants:
                return Plan(late, takes, (pid, "outside"))
            has[pid] = False
            continue
        inherits = parent.get("sid") == sid and has.get(parent["pid"], False)
        is_late = parent["pid"] in late or wants
        if is_late and not _same_namespaces(p, parent):
            return Plan(late, takes, (pid, "namespaces"))
        if wants and not inherits:
            return Plan(late, takes, (pid, "parent"))
        if is_late and inherits and not wants:
            return Plan(late, takes, (pid, "unwanted"))
        has[pid] = wants
        if is_late:
            late.append(pid)
        elif group is not None and first[group] in late:
            return Plan(late, takes, (pid, "group"))   # (it would join a group no stand-in is in yet)
    return Plan(late, takes, None)


def _same_namespaces(p: dict, parent: dict) -> bool:
    """A late stand-in makes no namespace (those made before the mounts are needed by them, and made by
    stand-ins there already): it is in its parent's (its mount namespace too: a stand-in seeing it
    makes its superblocks), its user namespace its parent's, joined last or inherited
    (engine/userns_cr.py spawn_in)."""
    return (p.get("ns") == parent.get("ns") and p.get("userns") == parent.get("userns")
            and not p.get("userns_start") and not p.get("ns_made_in")
            and (not p.get("userns_first") or bool(parent.get("userns_first"))))


def why(pid: int, what: str) -> str:
    """The one-line refusal for a Plan's problem (`pid` a running or stopped process)."""
    from engine import kernel
    name = f"process {pid} ({kernel.comm_shown(pid)})"
    return {
        "outside": f"{name} has the controlling terminal of a session led outside the tree (the terminal it "
                   "was started from): restore gives no terminal it did not make; start the tree's root with "
                   "setsid (or with no terminal: setsid -w, </dev/null), or dump with --shell-job to leave the "
                   "terminal behind; the tree keeps running",
        "leader": f"{name} leads its session and has a controlling terminal that restore would not make again "
                  "(a pty whose master no process of the tree holds, or no pty, and it holds no /dev/tty): dump "
                  "the process holding the master too (the terminal's emulator, a container's console holder), "
                  "or keep /dev/tty open in it; the tree keeps running",
        "parent": f"{name} has its session's controlling terminal but its parent, in the same session, has not "
                  "(a member inherits the terminal at fork only): not supported; the tree keeps running",
        "namespaces": f"{name} is (or descends from) a member of a session with its controlling terminal, in "
                      "other namespaces than its parent: its stand-in, forked once the terminal exists, cannot "
                      "make namespaces then: not supported; the tree keeps running",
        "member": f"{name} holds /dev/tty without a controlling terminal: not supported",
        "group": f"{name} has not its session's controlling terminal but is in a process group whose first "
                 "process has it (forked once the terminal exists, after this one): not supported; the tree keeps "
                 "running",
        "unwanted": f"{name} has no controlling terminal but its parent in its session has (it left the terminal "
                    "with TIOCNOTTY): not supported; the tree keeps running",
    }[what]


def shell_terminal(pid: int, sid: int, pids) -> bool:
    """Has `pid` (of session `sid`) the terminal of a session led outside the tree `pids` (the
    terminal the tree was started from), which `mntcr dump --shell-job` leaves behind?"""
    return sid not in pids and tty_nr(pid) != 0


def refusal(tree, shell_job: bool = False) -> str | None:
    """Why the controlling terminals of `tree` ([(pid, ppid)], parents first, running or stopped)
    cannot be made again (one line naming the process and what to do), or None. With `shell_job`,
    the terminal of a session led outside the tree counts as none (restore gives none)."""
    procs, nrs = [], {}
    pids = {pid for pid, _ in tree}
    for pid, ppid in tree:
        try:
            fields = procstat.fields(pid)
        except OSError:
            continue   # (gone: told by the checks after the stop)
        sid, nrs[pid] = int(fields[procstat.SESSION]), int(fields[procstat.TTY_NR])
        if shell_job and sid not in pids:
            nrs[pid] = 0
        procs.append({"pid": pid, "ppid": ppid, "sid": sid, "pgid": int(fields[2])})
    if not any(nrs.values()):
        return None   # (no terminal at all: the common case costs one read a process)
    for p in procs:
        p["ns"] = _namespaces(p["pid"])
    masters = _masters([p["pid"] for p in procs])
    for p in procs:
        pid, nr = p["pid"], nrs[p["pid"]]
        if not nr:
            continue
        if p["sid"] != pid:
            p["ctty"] = True
        elif _restored(pid, nr, masters):
            p["fds"] = [{"kind": "ctty", "tty": None}]   # (what leader_takes looks for)
        else:
            return why(pid, "leader")
    problem = plan(procs).problem
    return None if problem is None else why(*problem)


def _namespaces(pid: int) -> dict:
    out = {}
    for kind in ("mnt", "pid", "uts", "ipc", "net", "cgroup", "user"):
        try:
            out[kind] = os.stat(f"/proc/{pid}/ns/{kind}").st_ino
        except OSError:
            pass
    return out


def _restored(pid: int, nr: int, masters: set[int]) -> bool:
    """Is the terminal `nr` of leader `pid` made again: it holds /dev/tty (engine/fds/pty.py refuses
    what it cannot make), or it is a pty whose master a process of the tree holds (taken again through
    the slave it holds, or its node: `node_of`)?"""
    from engine.fds import pty
    if os.makedev(5, 0) in pty.char_rdevs(pid):
        return True
    index = pty.number_of(*device(nr))
    return index is not None and index in masters


def _masters(pids) -> set[int]:
    """The numbers of the pty masters the processes `pids` hold (TIOCGPTN on a copy of each)."""
    from engine import kernel
    from engine.fds import pty, sys as fsys
    out = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        pidfd = None
        try:
            for n in names:
                try:
                    st = os.stat(f"/proc/{pid}/fd/{n}")
                    if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(5, 2)):
                        continue
                    pidfd = kernel.pidfd_open(pid) if pidfd is None else pidfd
                    fd = fsys.pidfd_getfd(pidfd, int(n))
                    try:
                        out.add(pty.index_of(fd))
                    finally:
                        os.close(fd)
                except OSError:
                    continue
        finally:
            if pidfd is not None:
                os.close(pidfd)
    return out


def record(procs_doc: list[dict], shell_job: bool = False) -> list[int]:
    """Mark each image process that is a member of a session with the controlling terminal
    ("ctty"), read while the tree is stopped; give each `ctty_node` the ptmx of its pty's master
    (none in the tree: the node is dropped, and the plan refuses the leader). With `shell_job`, a
    terminal of a session led outside the tree is not marked: the pids left without it are returned."""
    pids = {p["pid"] for p in procs_doc}
    dropped = [p["pid"] for p in procs_doc if shell_job and shell_terminal(p["pid"], p.get("sid"), pids)]
    masters = {f["obj"]: f["ptmx"] for p in procs_doc for f in p["fds"]
               if f.get("kind") == "pty" and f.get("end") == "master" and "ptmx" in f}
    for p in procs_doc:
        if p.get("sid") != p["pid"] and p["pid"] not in dropped and tty_nr(p["pid"]):
            p["ctty"] = True
        node = p.get("ctty_node")
        if node is not None:
            if node["obj"] in masters:
                node["ptmx"] = dict(masters[node["obj"]])
            else:
                del p["ctty_node"]
                p["ctty"] = True   # (so that the plan names it: a leader whose terminal is not made again)
    return dropped
