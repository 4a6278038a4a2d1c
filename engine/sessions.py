"""Sessions and process groups: who leads them and who belongs, made again by the stand-ins.

Dump records each process's session and process group ids ("sid", "pgid": pids as the dumper sees
them, like "pid"). Pids change on restore, so what is restored is what the ids mean: a process that
led its session calls setsid() as soon as its stand-in exists, before its children are forked (a
session is only ever inherited); once every stand-in exists, group leaders call setpgid(0, 0) and
then members join their leader's group (`plan`). A shell's job control (`sh -i` on a pty: each job
a group of its own), `setsid` and daemons that fork once are made that way.

What the stand-ins cannot make is refused before the tree is stopped (`refusal`): a process whose
session is neither its own nor its parent's (its leader gone: a daemon that forked twice, or a
process its parent's death moved), a process group whose leader is not in the tree and that is
not its parent's. The root's session and group, when they are not its own, are outside the tree:
the restored root leads a group of its own (the restored tree is not a job of `mntcr restore`).
"""

from __future__ import annotations

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
    of a leader's terminal counts when the leader holds /dev/tty (its terminal is restored then)."""
    procs = [{"pid": pid, "ppid": ppid, "sid": ids[pid][0], "pgid": ids[pid][1]} for pid, ppid in tree if pid in ids]
    for p in procs:
        if p["sid"] == p["pid"] and _holds_dev_tty(p["pid"]):
            fg = _foreground_or_none(p["pid"])
            if fg is not None and fg != p["pgid"]:
                p["tty_fg"] = fg
    problem = plan(procs)[3]
    if problem is None:
        return None
    pid, what, n = problem
    if what == "foreground":
        return (f"process {pid} ({_comm(pid)}) holds /dev/tty, and its terminal's foreground process group {n} "
                "is led by no process of its session in the tree: bring a job of the tree to the foreground "
                "(or the shell itself) and dump again; the tree keeps running")
    if what == "session":
        return (f"process {pid} ({_comm(pid)}) is in session {n}, neither its own nor its parent's: a "
                f"session is only inherited or made by setsid, and its leader {_whose(n, ids)}; dump a tree "
                "whose processes lead their session or share their parent's (a daemon that forks twice: run "
                "it in the foreground or with one fork); the tree keeps running")
    return (f"process {pid} ({_comm(pid)}) is in process group {n}, not its parent's, and the group's leader "
            f"{_whose(n, ids)}: a group is joined through a process of the tree that leads it in the same "
            "session; dump a tree whose process groups are led by one of its processes; the tree keeps running")


def _holds_dev_tty(pid: int) -> bool:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for n in names:
        try:
            if os.stat(f"/proc/{pid}/fd/{n}").st_rdev == os.makedev(5, 0):
                return True
        except OSError:
            pass
    return False


def _foreground_or_none(pid: int) -> int | None:
    try:
        return foreground(pid)
    except OSError:
        return None


def _whose(leader: int, ids: dict) -> str:
    return "is in another session" if leader in ids else "is not in the tree"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", errors="backslashreplace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def plan(procs: list[dict]):
    """(setsid, now, later, problem) for image processes `procs` (parents first, each with "sid" and
    "pgid", a session leader whose terminal's foreground group is another with "tty_fg"): the pids whose stand-in calls setsid() as soon as it exists, {pid: leader} the setpgid(0,
    leader) each calls right after (leader == pid: its own group), [(pid, leader)] those called once
    every stand-in exists (a leader made later than its member), and the first (pid, "session",
    "pgrp" or "foreground", id) that cannot be made (None). The root leads its group whatever the image says.

    It follows which group each stand-in is in (by the dumped group id), as forks pass it on."""
    by_pid = {p["pid"]: p for p in procs}
    setsid, now, later = set(), {}, []
    group: dict[int, int] = {}     # pid -> the dumped group its stand-in is in once spawned
    session: dict[int, int] = {}
    made: set[int] = set()         # dumped groups some stand-in is in
    for i, p in enumerate(procs):
        pid, sid, pgid = p["pid"], p.get("sid"), p.get("pgid")
        parent = by_pid.get(p.get("ppid")) if i else None
        if parent is None:
            session[pid] = sid if sid is not None else 0
            group[pid] = pgid if pgid is not None else pid
            if sid == pid:
                setsid.add(pid)
            made.add(group[pid])
            continue
        if sid == pid:
            setsid.add(pid)
            session[pid] = group[pid] = pid
        else:
            session[pid], group[pid] = session[parent["pid"]], group[parent["pid"]]
            if sid is not None and sid != session[pid]:
                return setsid, now, later, (pid, "session", sid)
        if pgid is None or pgid == group[pid]:
            made.add(group[pid])
            continue
        if pgid == pid:
            now[pid] = pid
        elif pgid in by_pid and by_pid[pgid].get("sid") == sid and by_pid[pgid].get("pgid") == pgid:
            if pgid not in made:
                later.append((pid, pgid))   # (its children, forked before, join it then too)
                continue
            now[pid] = pgid
        else:
            return setsid, now, later, (pid, "pgrp", pgid)
        group[pid] = pgid
        made.add(pgid)
    for p in procs:
        fg = p.get("tty_fg")
        if fg is not None and (p.get("sid") != p["pid"] or fg not in by_pid or by_pid[fg].get("pgid") != fg
                               or by_pid[fg].get("sid") != p["pid"]):
            return setsid, now, later, (p["pid"], "foreground", fg)
    return setsid, now, later, None


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
