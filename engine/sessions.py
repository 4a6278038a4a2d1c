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
through that one. A process in the session of a living leader of the tree that is no ancestor of it, whose parent is
an ancestor of that leader (dumb-init's setsid mode, CRIU's child_subreaper_and_reparent: an
orphan of the leader's session went to the init or a subreaper above it) is made as CRIU's session
helper makes it: an intermediate child of the leader's stand-in forks its stand-in and exits, and
its parent's stand-in, a child subreaper meanwhile, adopts it (`adopt`). What the stand-ins cannot
make is refused before the tree is stopped (`refusal`): a session shared with a process that is
not an ancestor otherwise (two daemons of one gone leader, a leader of the tree in another branch
than the parent's, or in another pid or user namespace), a process group of another session, or a
session and a group of their own both of gone leaders. The root's session and group, when
they are not its own, are outside the tree: the restored root leads a group of its own (the restored
tree is not a job of `mntcr restore`).
"""

from __future__ import annotations

import errno
import os
from engine import procstat

from engine import records


def read(pid: int) -> tuple[int, int]:
    """(session id, process group id) of `pid`, as our pid namespace sees them (/proc/PID/stat)."""
    return _stat(pid)[:2]


def foreground(pid: int) -> int | None:
    """The foreground process group of `pid`'s controlling terminal (None: it has none)."""
    tpgid = _stat(pid)[2]
    return tpgid if tpgid > 0 else None


def _stat(pid: int) -> tuple[int, int, int]:
    fields = procstat.fields(pid)
    return int(fields[procstat.SESSION]), int(fields[procstat.PGRP]), int(fields[procstat.TPGID])


def ids_of(tree) -> dict[int, tuple[int, int]]:
    """pid -> (session id, process group id) of each process of `tree` still there."""
    out = {}
    for pid, _ in tree:
        try:
            out[pid] = read(pid)
        except OSError:
            pass   # (gone: told by the checks after the stop)
    return out


def refusal(tree, ids: dict[int, tuple[int, int]], dead=frozenset()) -> str | None:
    """Why the sessions and groups of `tree` ([(pid, ppid)], parents first; `ids`: pid -> (sid, pgid))
    cannot be made again (one line naming the process and what to do), or None. The foreground group
    of a leader's terminal counts when the leader has a terminal (restored: engine/ctty.py). `dead`:
    the pids of zombies among them (the image's zombie records: `plan` adopts none)."""
    procs = [{"pid": pid, "ppid": ppid, "sid": ids[pid][0], "pgid": ids[pid][1]} for pid, ppid in tree if pid in ids]
    for p in procs:
        if p["pid"] in dead:
            p["status"] = 0
    _add_namespaces(procs, ids)
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
        why = ("its leader is a process of the tree that is not its ancestor, and its parent is not the leader's "
               "ancestor in their pid and user namespace (which would adopt it)" if n in ids else
               "its leader is gone and another process of the tree, not its ancestor, is in it too")
        return (f"process {pid} ({_comm(pid)}) is in session {n}, which it can neither inherit from its parent nor "
                f"make: {why}, and a session is inherited, made by setsid or (its leader gone) made again for one "
                "process and its descendants; dump a tree whose processes share a session only with their "
                "ancestors (a daemon's helpers started by the daemon); the tree keeps running")
    return (f"process {pid} ({_comm(pid)}) is in process group {n}, which it can neither inherit from its parent "
            "nor join or make: the group is another session's, or both its session and its group are of gone "
            "leaders; dump a tree whose process groups are in their members' session; the tree keeps running")


def _add_namespaces(procs: list[dict], ids: dict) -> None:
    """Each process that may be adopted into another's session (`_adoptable`), its parent and that
    session's leader get their pid and user namespaces ("ns" "pid", "userns": inode numbers), which
    `plan` compares; one that cannot be read gets a value of its own (it matches nothing)."""
    need = set()
    for p in procs:
        parent = ids.get(p["ppid"])
        if p["sid"] != p["pid"] and p["sid"] in ids and parent is not None and parent[0] != p["sid"]:
            need |= {p["pid"], p["ppid"], p["sid"]}
    for p in procs:
        if p["pid"] in need:
            try:
                p["ns"] = {"pid": os.stat(f"/proc/{p['pid']}/ns/pid").st_ino}
                p["userns"] = os.stat(f"/proc/{p['pid']}/ns/user").st_ino
            except OSError:
                p["ns"], p["userns"] = {"pid": ("unread", p["pid"])}, ("unread", p["pid"])


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
#   adopt    pid -> leader: its stand-in is forked in the session of that living leader, which is no
#            ancestor of it, by an intermediate child of the leader's stand-in that exits at once;
#            its parent's stand-in, a child subreaper meanwhile, adopts it (CRIU's session helper)
#   order    the pids in the order their stand-ins are made: parents first, an adopted process
#            (and its descendants) after its session's leader
Plan = records.named_tuple("Plan", "setsid now later problem orphans adopt order", __name__,
                          "How the stand-ins make the image's sessions and process groups (`plan`).")


def plan(procs: list[dict]):
    """The Plan for image processes `procs` (parents first, each with "sid" and "pgid"; a session
    leader whose terminal's foreground group is another with "tty_fg"). The root leads its group
    whatever the image says. A process whose session's leader is no process of the tree (a daemon
    that forked twice) starts in a session an intermediate process made and left, its first one; its
    descendants inherit it, no other process can join it. The same for a group whose leader is gone
    (`printf x | sleep &` in `sh -i`), which other processes of its session join through a member.
    A process in the session of a living leader of the tree that is no ancestor of it, whose parent
    is an ancestor of that leader (dumb-init's setsid mode: the shell's orphan went to the init's
    parent), is adopted (`adopt`) when all three are in one pid and one user namespace ("ns" "pid"
    and "userns", compared when given).

    It follows which session and group each stand-in is in (by the dumped ids), as forks pass them on.
    Siblings are made in the image's order (by pid, as dump lists them: restored pids keep their
    order), but where that would make an adopted process wait for itself."""
    by_pid = {p["pid"]: p for p in procs}
    out = _walk(procs, by_pid, True)
    if out.problem == "cycle":
        out = _walk(procs, by_pid, False)
    if out.problem == "cycle":
        p = next(p for p in procs if p["pid"] not in out.order)
        return out._replace(problem=(p["pid"], "session", p.get("sid")))
    if out.problem is not None:
        return out
    for p in procs:
        fg = p.get("tty_fg")
        if fg is not None and (p.get("sid") != p["pid"] or foreground_member(procs, p) is None):
            return out._replace(problem=(p["pid"], "foreground", fg))
    return out


def _walk(procs: list[dict], by_pid: dict, siblings: bool):
    """`plan`'s steps, each process after its parent, an adopted one after its leader, and, with
    `siblings`, after its previous sibling; problem "cycle" when some wait for each other."""
    out = Plan(set(), {}, [], None, {}, {}, [])
    state = ({}, {}, {})   # group, session: pid -> the dumped one its stand-in is in; made: group -> first
    waiting: dict[int, list[int]] = {}   # pid -> indexes of the processes made only after it
    last: dict = {}
    before = []   # index -> the pid of its previous sibling, or None
    for p in procs:
        before.append(last.get(p.get("ppid")) if siblings else None)
        last[p.get("ppid")] = p["pid"]
    for i in range(len(procs)):
        todo = [i]
        while todo:
            todo.sort(reverse=True)   # (the first of the image's order first)
            j = todo.pop()
            got = before[j] if before[j] is not None and before[j] not in state[1] else \
                _place(procs[j], j, by_pid, state, out)
            if isinstance(got, int):
                waiting.setdefault(got, []).append(j)
                continue
            if got is not None:
                return out._replace(problem=got)
            out.order.append(procs[j]["pid"])
            todo += waiting.pop(procs[j]["pid"], [])
    return out._replace(problem="cycle") if waiting else out


def _place(p: dict, i: int, by_pid: dict, state: tuple, out) -> tuple | int | None:
    """Plan p's stand-in (`plan`): None, a problem, or the pid it must wait for (its parent, or
    the leader whose session it is adopted into, when not made yet)."""
    group, session, made = state
    pid, sid, pgid = p["pid"], p.get("sid"), p.get("pgid")
    parent = by_pid.get(p.get("ppid")) if i else None
    if parent is None:
        session[pid] = sid if sid is not None else 0
        group[pid] = pgid if pgid is not None else pid
        if sid == pid:
            out.setsid.add(pid)
        made[group[pid]] = pid
        return None
    if parent["pid"] not in session:
        return parent["pid"]
    problem = _session_of(p, parent, by_pid, session, group, out)
    if problem is None:
        problem = _group_of(p, by_pid, session, group, made, out)
    return problem


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
    if sid in by_pid and _adoptable(p, parent, by_pid[sid], by_pid):
        if sid not in session:
            del session[pid], group[pid]
            return sid   # (made once its leader's stand-in exists)
        out.adopt[pid] = sid
        session[pid], group[pid] = sid, group[sid]
        return None
    if sid in by_pid or sid in session.values():
        return (pid, "session", sid)   # (a leader of the tree not its ancestor, or one made already)
    out.orphans[pid] = "session"
    session[pid] = group[pid] = sid
    return None


def _adoptable(p: dict, parent: dict, leader: dict, by_pid: dict) -> bool:
    """Can p's stand-in be forked in the session of `leader` (living, no ancestor of p) and adopted
    by its parent's? The parent is an ancestor of the leader (the intermediate's orphan goes to the
    nearest child subreaper above it), none is a zombie, and all three share their pid namespace (a
    subreaper adopts only in its own) and user namespace (the stand-in starts as the leader's)."""
    if "status" in p or "status" in leader or leader.get("sid") != leader["pid"]:
        return False
    if any(x.get("ns", {}).get("pid") != p.get("ns", {}).get("pid") or x.get("userns") != p.get("userns")
           for x in (parent, leader)):
        return False
    up, seen = by_pid.get(leader.get("ppid")), set()
    while up is not None and up["pid"] not in seen:
        if up is parent:
            return True
        seen.add(up["pid"])
        up = by_pid.get(up.get("ppid"))
    return False


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
