"""Sessions and process groups: who leads them and who belongs, made again by the stand-ins.

Dump records each process's session and process group ids ("sid", "pgid": pids as the dumper sees
them, like "pid"). Pids change on restore, so what is restored is what the ids mean: a process that
led its session calls setsid() as soon as its stand-in exists, before its children are forked (a
session is only ever inherited); right after, a group leader calls setpgid(0, 0) and a member joins
its leader's group (once every stand-in exists, when the leader comes later: `plan`). A shell's job control (`sh -i` on a pty: each job
a group of its own), `setsid` and daemons that fork once are made that way.

A process whose session's leader is gone (a daemon that forked twice, `podman pause`, a process a
container runtime started and left) starts in a session and group an intermediate process made and
left (standin.spawn_alone); its descendants inherit them. So does the first process of a group whose
leader is gone (`printf x | sleep &` in `sh -i`: printf has exited); others of its session join it
through that one. What the stand-ins cannot make is
refused before the tree is stopped (`refusal`): a session shared with a process that is not an
ancestor (two daemons of one gone leader, a leader of the tree in another branch), a process group
of another session, or a session and a group of their own both of gone leaders. The root's session and group, when
they are not its own, are outside the tree: the restored root leads a group of its own (the restored
tree is not a job of `mntcr restore`).
"""

from __future__ import annotations

import collections
import errno
import os


def read(pid: int) -> tuple[int, int]:
    """(session id, process group id) of `pid`, as our pid namespace sees them (/proc/PID/stat)."""
    return _stat(pid)[:2]


def foreground(pid: int) -> int | None:
    """The foreground process group of `pid`'s controlling terminal (None: it has none)."""
    tpgid = _stat(pid)[2]
    return tpgid if tpgid > 0 else None


def _stat(pid: int) -> tuple[int, int, int]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[3]), int(fields[2]), int(fields[5])


def ids_of(tree) -> dict[int, tuple[int, int]]:
    """pid -> (session id, process group id) of each process of `tree` still there."""
    out = {}
    for pid, _ in tree:
        try:
            out[pid] = read(pid)
        except OSError:
            pass   # (gone: told by the checks after the stop)
    return out


def refusal(tree, ids: dict[int, tuple[int, int]]) -> str | None:
    """Why the sessions and groups of `tree` ([(pid, ppid)], parents first; `ids`: pid -> (sid, pgid))
    cannot be made again (one line naming the process and what to do), or None. The foreground group
    of a leader's terminal counts when the leader has a terminal (restored: engine/ctty.py)."""
    procs = [{"pid": pid, "ppid": ppid, "sid": ids[pid][0], "pgid": ids[pid][1]} for pid, ppid in tree if pid in ids]
    for p in procs:
        if p["sid"] == p["pid"] and _holds_terminal(p["pid"]):
            fg = _foreground_or_none(p["pid"])
            if fg is not None and fg != p["pgid"]:
                p["tty_fg"] = fg
    problem = plan(procs).problem
    if problem is None:
        return None
    pid, what, n = problem
    if what == "foreground":
        return (f"process {pid} ({_comm(pid)}) holds its terminal (/dev/tty or the pty), and its terminal's "
                f"foreground process group {n} "
                "has no process of its session in the tree: bring a job of the tree to the foreground "
                "(or the shell itself) and dump again; the tree keeps running")
    if what == "session":
        why = ("its leader is a process of the tree that is not its ancestor" if n in ids else
               "its leader is gone and another process of the tree, not its ancestor, is in it too")
        return (f"process {pid} ({_comm(pid)}) is in session {n}, which it can neither inherit from its parent nor "
                f"make: {why}, and a session is inherited, made by setsid or (its leader gone) made again for one "
                "process and its descendants; dump a tree whose processes share a session only with their "
                "ancestors (a daemon's helpers started by the daemon); the tree keeps running")
    return (f"process {pid} ({_comm(pid)}) is in process group {n}, which it can neither inherit from its parent "
            "nor join or make: the group is another session's, or both its session and its group are of gone "
            "leaders; dump a tree whose process groups are in their members' session; the tree keeps running")


def _holds_terminal(pid: int) -> bool:
    """Has leader `pid` a controlling terminal? Restore gives it back (through an fd it holds on
    it, or its node: engine/ctty.py), or dump refuses it before the stop."""
    from engine import ctty
    try:
        return ctty.tty_nr(pid) != 0
    except OSError:
        return False


def _foreground_or_none(pid: int) -> int | None:
    try:
        return foreground(pid)
    except OSError:
        return None


def _comm(pid: int) -> str:
    from engine import kernel
    return kernel.comm_shown(pid)


# What the stand-ins do to make the image's sessions and groups (`plan`):
#   setsid   pids whose stand-in calls setsid() as soon as it exists
#   now      pid -> leader: the setpgid(0, leader) it calls right after (itself: its own group)
#   later    [(pid, leader)]: those called once every stand-in exists (a leader made later)
#   problem  the first (pid, "session", "pgrp" or "foreground", id) that cannot be made, or None
#   orphans  pid -> "session" or "group": its stand-in starts in a session (and group), or a group,
#            whose leader is gone, made by an intermediate process that leaves it
Plan = collections.namedtuple("Plan", "setsid now later problem orphans")


def plan(procs: list[dict]):
    """The Plan for image processes `procs` (parents first, each with "sid" and "pgid"; a session
    leader whose terminal's foreground group is another with "tty_fg"). The root leads its group
    whatever the image says. A process whose session's leader is no process of the tree (a daemon
    that forked twice) starts in a session an intermediate process made and left, its first one; its
    descendants inherit it, no other process can join it. The same for a group whose leader is gone
    (`printf x | sleep &` in `sh -i`), which other processes of its session join through a member.

    It follows which session and group each stand-in is in (by the dumped ids), as forks pass them on."""
    by_pid = {p["pid"]: p for p in procs}
    out = Plan(set(), {}, [], None, {})
    group: dict[int, int] = {}     # pid -> the dumped group its stand-in is in once spawned
    session: dict[int, int] = {}
    made: dict[int, int] = {}      # dumped group -> the first process whose stand-in is in it
    for i, p in enumerate(procs):
        pid, sid, pgid = p["pid"], p.get("sid"), p.get("pgid")
        parent = by_pid.get(p.get("ppid")) if i else None
        if parent is None:
            session[pid] = sid if sid is not None else 0
            group[pid] = pgid if pgid is not None else pid
            if sid == pid:
                out.setsid.add(pid)
            made[group[pid]] = pid
            continue
        problem = _session_of(p, parent, by_pid, session, group, out)
        if problem is None:
            problem = _group_of(p, by_pid, session, group, made, out)
        if problem is not None:
            return out._replace(problem=problem)
    for p in procs:
        fg = p.get("tty_fg")
        if fg is not None and (p.get("sid") != p["pid"] or foreground_member(procs, p) is None):
            return out._replace(problem=(p["pid"], "foreground", fg))
    return out


def foreground_member(procs: list[dict], leader: dict) -> int | None:
    """A process of `leader`'s session in its terminal's foreground group ("tty_fg"; its own leader
    first, when in the tree): the group restore gives the terminal to is that process's."""
    fg = leader.get("tty_fg")
    members = [p["pid"] for p in procs if p.get("pgid") == fg and p.get("sid") == leader["pid"]]
    return fg if fg in members else members[0] if members else None


def _session_of(p: dict, parent: dict, by_pid: dict, session: dict, group: dict, out) -> tuple | None:
    """Where p's stand-in starts: its own session, its parent's, or a gone leader's (`plan`)."""
    pid, sid = p["pid"], p.get("sid")
    if sid == pid:
        out.setsid.add(pid)
        session[pid] = group[pid] = pid
        return None
    session[pid], group[pid] = session[parent["pid"]], group[parent["pid"]]
    if sid is None or sid == session[pid]:
        return None
    if sid in by_pid or sid in session.values():
        return (pid, "session", sid)   # (a leader of the tree not its ancestor, or one made already)
    out.orphans[pid] = "session"
    session[pid] = group[pid] = sid
    return None


def _group_of(p: dict, by_pid: dict, session: dict, group: dict, made: dict, out) -> tuple | None:
    """The setpgid step p's stand-in takes, if any: its own group, a group some stand-in of its
    session is in already (joined through that member), one whose leader comes later, or one whose
    leader is gone made for it (`plan`)."""
    pid, pgid = p["pid"], p.get("pgid")
    if pgid is None or pgid == group[pid]:
        made.setdefault(group[pid], pid)
        return None
    if pgid == pid:
        out.now[pid] = pid
    elif pgid in made:
        if session[made[pgid]] != session[pid]:
            return (pid, "pgrp", pgid)   # (a group of another session)
        out.now[pid] = made[pgid]
    elif pgid in by_pid:
        leader = by_pid[pgid]
        if leader.get("sid") != p.get("sid") or leader.get("pgid") != pgid:
            return (pid, "pgrp", pgid)
        out.later.append((pid, pgid))   # (its children, forked before, join it then too)
        return None
    elif out.orphans.get(pid) is None:
        out.orphans[pid] = "group"
    else:
        return (pid, "pgrp", pgid)   # (a session and a group of their own, both of gone leaders)
    group[pid] = pgid
    made.setdefault(pgid, pid)
    return None


def pid_in(hostpid: int, seen_from: int, proc: int) -> int:
    """The pid of host process `hostpid` as process `seen_from` (host pid) sees it, read through
    `proc` (an fd on the host's /proc): setpgid takes a group id of the caller's pid namespace."""
    depth = len(_nspid(seen_from, proc))
    chain = _nspid(hostpid, proc)
    if len(chain) < depth:
        raise OSError(errno.ESRCH, f"process {hostpid} is not in the pid namespace of process {seen_from}")
    return chain[depth - 1]


def _nspid(pid: int, proc: int) -> list[int]:
    with open(os.open(f"{pid}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc), "rb") as f:
        return [int(x) for x in next(line for line in f if line.startswith(b"NSpid:")).split()[1:]]
