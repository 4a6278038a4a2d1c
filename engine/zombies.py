"""Zombies: processes of the tree that exited and that their parent has not reaped (yet, or ever:
`sh -c 'cmd & exec app'` leaves `cmd` a zombie of `app` once it exits, which is why tini exists).

A zombie holds no namespaces, fds or memory; what is left is what its parent's wait() would see
and what others see of it: its parent, name, wait status, session and process group (a group
keeps a zombie leader, and its members with it), and its ids. Dump records that much (`read`);
restore has the parent's stand-in fork a stand-in that takes the zombie's session and group like
any other (engine/sessions.py), then its name and ids, and exits with the status (`become`)
before the restore commits. The parent's stand-in never waits for its children, so it stays a
zombie; a restore that fails kills the parent, and the zombie goes with it. A parent that ignores
SIGCHLD has its children reaped as they exit, so it has zombies only if it ignored it after they
exited; its stand-in ignores it as it detaches, after the zombie exists, which reaps nothing (the
SA_NOCLDWAIT flag, which /proc does not show, is not kept). A zombie comes back in its parent's
pid namespace, or as init of a new one below it when it was (its NSpid is one deeper, ending in 1).
Such an init dies of no signal it sends itself: one that was killed comes back killed by the
restorer (SIGKILL: `init_status_problem`).

A status with the core flag (0x80: a core was written) comes back without it: the stand-in is not
dumpable when it kills itself, so no core file of it is ever written on the restoring host.
"""

from __future__ import annotations

import errno
import os
import _signal as signal   # (not signal.py: its enum classes are ~1 ms of every verb's imports)

from engine import kernel, procstat, sessions, threads
from engine.dumperror import DumpError

# Signals that stop, or are ignored, by default: no process dies of one (its status would be a
# stop or never exist), and the stand-in could not die of it either.
NOT_FATAL = frozenset((signal.SIGCHLD, signal.SIGCONT, signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN,
                       signal.SIGTTOU, signal.SIGURG, signal.SIGWINCH))


def status_problem(status: int) -> str | None:
    """Why `status` (a wait status: code << 8, or a signal | 0x80 core) is none a zombie can have."""
    if status & 0x7F == 0:
        return None if status >> 8 <= 0xFF else "an exit code above 255"
    sig = status & 0x7F
    if status >> 8:
        return "both an exit code and a signal"
    if sig > 64 or sig in NOT_FATAL:
        return f"signal {sig}, of which no process dies"
    return None


def init_status_problem(status: int) -> str | None:
    """Why a zombie that was init of a pid namespace of its own cannot come back with `status`: its
    stand-in is init there too, which no signal sent from inside kills (the kernel ignores those
    without a handler); the restorer, outside, kills it with SIGKILL only (as its parent did)."""
    sig = status & 0x7F
    if sig and sig != signal.SIGKILL:
        return (f"it was init of a pid namespace of its own and died of signal {sig} (a fault): restore "
                "makes such an init die of SIGKILL only; not supported")
    return None


def _stat(pid: int) -> list[bytes]:
    return procstat.fields(pid)


def is_zombie(pid: int) -> bool:
    """Whether `pid` is a zombie (state Z or X); False when it is gone."""
    return threads.task_state(str(pid)) in ("Z", "X")


def split(tree) -> tuple[list, list]:
    """(live, zombies) of `tree` [(pid, ppid)] (parents first), each in the tree's order. A zombie
    that is the root, a zombie leader whose threads live (engine/threads.py), or a zombie whose
    parent is not a live process of the tree (a daemon's: not ours), or one in a pid namespace it
    cannot be made in (`_own_pidns`) or with ids its parent's user namespace does not map, is
    refused (DumpError), before the tree is stopped."""
    live, dead = [], []
    for pid, ppid in tree:
        try:
            threads.check_leader(pid)
        except threads.ThreadError as e:
            raise DumpError(e.errno, e.strerror) from None
        (dead if is_zombie(pid) else live).append((pid, ppid))
    if dead and dead[0][1] is None:
        raise DumpError(errno.ESRCH, f"process {dead[0][0]} has exited (a zombie): there is no tree to dump")
    alive = {pid for pid, _ in live}
    for pid, ppid in dead:
        if ppid not in alive:
            raise DumpError(errno.EOPNOTSUPP, f"process {pid} ({_comm(pid)}) has exited and its parent {ppid} "
                                              "is no live process of the dumped tree: its zombie cannot be made "
                                              "again; the tree keeps running")
        # (a zombie's pid namespace never changes: refused here, before the stop, not once stopped)
        try:
            nspids = _nspid(pid), _nspid(ppid)
        except OSError:
            continue   # (reaped meanwhile: `read` leaves it out)
        if _own_pidns(pid, ppid, _comm(pid), nspids):
            try:
                why = init_status_problem(int(_stat(pid)[49]))
            except OSError:
                continue
            if why:
                raise DumpError(errno.EOPNOTSUPP, f"process {pid} ({_comm(pid)}), a zombie of {ppid}: {why}; "
                                                  "the tree keeps running")
        _refuse_unmapped(pid, ppid)
    return live, dead


def _refuse_unmapped(pid: int, ppid: int) -> None:
    """Refuse zombie `pid` whose ids its parent's user namespace does not map (`ids_inside`), before
    the stop: neither its ids nor its parent's namespace's maps change any more."""
    from engine import userns
    if kernel.ns_ino(ppid, "user") in (None, userns.own_userns_ino()):
        return   # (the dumper's: no map to check; gone: `read` leaves it out)
    try:
        ids = kernel.proc_status(pid, ("Uid", "Gid"))
        maps = userns.read_maps_of_pid(ppid)
    except OSError:
        return
    z = {"pid": pid, "ppid": ppid, "comm": _comm(pid),
         "uid": [int(x) for x in ids["Uid"].split()], "gid": [int(x) for x in ids["Gid"].split()]}
    ids_inside(z, {"uid_map": maps.uid_map, "gid_map": maps.gid_map})


def read(pid: int, ppid: int) -> dict | None:
    """The image record of zombie `pid` (child of `ppid`), its ids as the dumper sees them; None when
    it is gone (reaped meanwhile). Its exit status is /proc/PID/stat's exit_code (field 52)."""
    try:
        fields = _stat(pid)
        ids = kernel.proc_status(pid, ("Uid", "Gid"))
        comm = kernel.read_comm(pid)
    except OSError:
        return None
    if fields[0] not in (b"Z", b"X"):
        raise DumpError(errno.EOPNOTSUPP, f"process {pid} ({comm}) was a zombie and runs again? dump again")
    # (fields after comm: state is field 3, so field N is fields[N - 3])
    rec = {"pid": pid, "ppid": ppid, "comm": comm, "status": int(fields[49]),
           "sid": int(fields[3]), "pgid": int(fields[2])}
    if _own_pidns(pid, ppid, comm):
        rec["pidns_init"] = True
    uid, gid = [int(x) for x in ids["Uid"].split()], [int(x) for x in ids["Gid"].split()]
    if set(uid + gid) != {0}:
        rec["uid"], rec["gid"] = uid, gid
    return rec


def pidns_children(pid: int, own: int | None, names: dict, dead) -> dict:
    """{"pidns_children": id} when `pid`'s children go to another pid namespace than its own (`own`:
    its inode; `unshare --pid --fork` made it and forked pid 1 there), one a process of the tree is
    in (`names`: {(kind, inode): image id}); {"pidns_children_zombie": pid} when that namespace's init
    exited and waits for it (`dead`: the tree's zombies [(pid, ppid)], as engine/freeze.py found
    them: `unshare -p -f` whose program ended; restore makes that zombie init again);
    {"pidns_children_new": True} when it made one that has no init yet (`unshare --pid` without
    --fork, before the first fork: the kernel shows no link for it), which its stand-in makes again.
    DumpError for one that holds no process, asked before the stop (engine/prestop.py) and again once
    stopped."""
    later = kernel.ns_ino(pid, "pid_for_children")
    if later is None and kernel.ns_ino(pid, "pid") is None or later == own:
        return {}   # (gone meanwhile: dump tells once stopped)
    if later is None:
        return {"pidns_children_new": True}
    if ("pid", later) in names:
        return {"pidns_children": names[("pid", later)]}
    for kid, ppid in dead:
        try:
            if ppid == pid and _init_below(_nspid(kid), _nspid(pid)):
                return {"pidns_children_zombie": kid}
        except OSError:
            continue   # (reaped meanwhile)
    raise DumpError(errno.EOPNOTSUPP, _NO_PROCESS.format(pid=pid))


_NO_PROCESS = ("process {pid}: the pid namespace its children go to holds no process of the tree (its init "
               "exited and was reaped: `unshare --pid --fork` whose program ended): not supported")


def _init_below(mine: list[int], theirs: list[int]) -> bool:
    """Whether NSpid `mine` is pid 1 of a pid namespace one below that of NSpid `theirs`."""
    return len(mine) == len(theirs) + 1 and mine[-1] == 1


def _own_pidns(pid: int, ppid: int, comm: str, nspids: tuple | None = None) -> bool:
    """Whether zombie `pid` was init of a pid namespace of its own, below its parent's (its parent
    unshared one before forking it: `unshare -p -f` whose child exited). One in any other pid
    namespace than its parent's (a parent's setns to a deeper one) is refused: not made again.
    `nspids`: (its NSpid, its parent's) when already read."""
    mine, theirs = nspids or (_nspid(pid), _nspid(ppid))
    if len(mine) == len(theirs):
        return False
    if _init_below(mine, theirs):
        return True
    raise DumpError(errno.EOPNOTSUPP, f"process {pid} ({comm}), a zombie of {ppid}: it was in a pid namespace "
                                      "its parent joined, not its parent's nor one of its own: not supported; "
                                      "the tree keeps running")


def _nspid(pid: int) -> list[int]:
    return [int(x) for x in kernel.proc_status(pid, ("NSpid",)).get("NSpid", "").split()]


def ids_inside(z: dict, maps: dict) -> None:
    """Turn zombie record `z`'s ids (the dumper's) into those of its parent's user namespace (its
    record `maps`: a zombie's own namespace links are gone; it is made in its parent's), refusing
    one that namespace does not map."""
    from engine import userns
    uid = z.get("uid", [0] * 4)
    gid = z.get("gid", [0] * 4)
    inside_uid, inside_gid = userns.inside(uid, maps["uid_map"]), userns.inside(gid, maps["gid_map"])
    if None in inside_uid + inside_gid and set(uid + gid) == {0}:
        return   # (the dumper's root, unmapped there: its stand-in keeps the restorer's, as a live one's)
    if None in inside_uid + inside_gid:
        raise DumpError(errno.EOPNOTSUPP, f"process {z['pid']} ({z['comm']}), a zombie of {z['ppid']}: its ids "
                                          f"{uid}/{gid} are not mapped in its parent's user namespace: not "
                                          "supported; the tree keeps running")
    z["uid"], z["gid"] = inside_uid, inside_gid


def in_order(procs: list[dict], zombies: list[dict]) -> list[dict]:
    """The image's processes, then its zombies: the order stand-ins are made in (sessions.plan's
    input; a zombie has no children, so any place after its parent is one)."""
    return list(procs) + list(zombies)


def refusal(live, dead) -> str | None:
    """Why the sessions and groups of the live processes and zombies cannot be made again
    (engine/sessions.py), in the order restore makes them (`in_order`), or None."""
    return sessions.refusal(list(live) + list(dead), sessions.ids_of(list(live) + list(dead)),
                            frozenset(pid for pid, _ in dead))


# --- restore: in the zombie's stand-in -------------------------------------------------------------

def become(comm: str, uid, gid, userns_fd: int | None) -> None:
    """Take zombie `comm`'s name and ids (in user namespace `userns_fd` when given); then `die`."""
    from engine import userns_cr
    kernel.set_comm(comm)
    userns_cr.become(userns_fd, uid, gid, None)
    kernel.set_dumpable(False)   # (after the ids, which set it again: no core of ours is written)


def die(status: int) -> None:
    """Die with wait status `status`: _exit(code), or killed by the signal at its default action."""
    sig = status & 0x7F
    if not sig:
        os._exit(status >> 8)
    if os.getpid() == 1:
        # Init of its pid namespace: a signal of its own is ignored (no handler); the restorer
        # SIGKILLs it from outside (init_status_problem: the only signal it may have died of).
        # Should that never come (the restorer died), it ends anyway: no stand-in is left behind.
        import time
        time.sleep(60)
        os._exit(127)
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):
        pass   # (32, 33: glibc's own, never changed from their default)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    os._exit(127)   # (not reached: the status check after tells it did not die of the signal)


def wait_dead(pid: int, timeout: float = 10.0) -> int | None:
    """The exit status zombie stand-in `pid` shows once it is a zombie (None: not within `timeout`)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = _stat(pid)
        except OSError:
            return None   # (reaped: its parent is gone)
        if fields[0] in (b"Z", b"X"):
            return int(fields[49])
        time.sleep(0.002)
    return None


_comm = kernel.comm_shown
