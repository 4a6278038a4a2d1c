"""File locks the dumped processes hold (flock, POSIX, OFD, leases): read from fdinfo, kept in the
image (a process's "locks"), taken again by its stand-in before the tree runs.

Who owns a lock decides who takes it again. A POSIX lock belongs to the process: its stand-in
takes it through the fd the kernel shows it on (the description it was taken through). A flock
lock, an OFD lock and a lease belong to the open file description (shared by dup, fork and
SCM_RIGHTS): taken once, through one fd of it, by the process the kernel names (flock and lease:
the one that took it, which /proc/locks shows; OFD locks name none: the first holder). A flock
lock whose taker closed its fd since is taken by it through a copy of a holder's fd (`of`); one
whose taker is gone (the shell's `exec 9>f; flock 9`) by the restorer, which exits too (`gone`).

What cannot be made again exactly is refused, before the stop (`precheck`, from /proc/locks) and
once the tree is stopped (`settle`): a process of the tree waiting for a lock, a mandatory lock, a
lease being broken, a write lease (dump reads the files of the tree's mounts: that open breaks
it), a flock lock whose taker is alive outside the tree, a lease whose taker holds no fd of it.
"""

from __future__ import annotations

import _thread
import errno
import fcntl
import os
import struct

from engine.fds import FdError

MODES = ("read", "write")
_KERNEL_TYPE = {"POSIX": "posix", "FLOCK": "flock", "OFDLCK": "ofd", "LEASE": "lease"}
_STATE = {"posix": "ADVISORY", "flock": "ADVISORY", "ofd": "ADVISORY", "lease": "ACTIVE"}
_F_OFD_SETLK = 37
_F_OFD_SETLKW = 38
# fcntl and flock syscall numbers, to tell a process blocked in a lock wait (/proc/PID/syscall):
# OFD waiters show no pid in /proc/locks.
_LOCK_SYSCALLS = {"x86_64": (72, 73), "aarch64": (25, 32)}
_WAIT_CMDS = (fcntl.F_SETLKW, _F_OFD_SETLKW)


def parse(text: str) -> dict:
    """One lock line of fdinfo or /proc/locks ("1: POSIX  ADVISORY  WRITE 123 fe:00:45 0 EOF", an
    fdinfo line without its "lock:" key) -> {type, mode, start, end, pid, inode, waiter, state};
    type None for a kind mntcr does not know (a delegation, an ACCESS lock), end None for EOF."""
    words = text.split()
    waiter = len(words) > 1 and words[1] == "->"
    rest = words[2:] if waiter else words[1:]
    if len(rest) < 7:
        raise FdError(errno.EINVAL, f"unreadable lock line {text.strip()!r}")
    kind, state, mode, pid, inode, start, end = rest[:7]
    return {"type": _KERNEL_TYPE.get(kind), "kernel_type": kind, "state": state, "mode": mode.lower(),
            "pid": int(pid), "inode": inode, "start": int(start), "end": None if end == "EOF" else int(end),
            "waiter": waiter}


def _show(lock: dict) -> str:
    """A lock as refusals name it: "a FLOCK WRITE lock" / "a POSIX READ lock on bytes 5-14"."""
    what = f"a {lock.get('kernel_type') or lock['type'].upper()} {lock['mode'].upper()} " \
           f"{'lease' if lock['type'] == 'lease' else 'lock'}"
    if lock["type"] in ("posix", "ofd") and (lock["start"] or lock["end"] is not None):
        what += f" on bytes {lock['start']}-{'EOF' if lock['end'] is None else lock['end']}"
    return what


def refuse_kind(lock: dict, where: str) -> None:
    """Refuse (FdError) a lock that restore cannot make exactly, whoever holds it: `where` names the
    process, fd and file."""
    why = None
    if lock["type"] is None:
        why = f"{lock['kernel_type']} locks are not supported"
    elif lock["state"] == "MANDATORY":
        why = "mandatory locks are not supported"
    elif lock["state"] != _STATE[lock["type"]]:
        why = f"a lease being broken, {lock['state']}: restore cannot make that state"
    elif lock["mode"] not in MODES:
        why = f"its mode {lock['mode'].upper()} cannot be taken again"
    elif lock["type"] == "lease" and lock["mode"] == "write":
        why = "a write lease: dump reads the files of the tree's mounts, and that open breaks it"
    if why:
        raise FdError(errno.EOPNOTSUPP, f"{where}: {_show(lock)} ({why})")


def fd_locks(lines: list[str], where: str) -> list[dict]:
    """The locks an fd's fdinfo shows ("lock:" values), each refused here when no restore can make
    it (`refuse_kind`)."""
    out = []
    for line in lines:
        lock = parse(line)
        refuse_kind(lock, where)
        out.append(lock)
    return out


def settle(procs_doc: list[dict], seen: dict) -> None:
    """Give each process of the image its "locks": [{fd, type, mode, start, end[, of]}], from `seen`
    {(pid, fd): (target, [parsed locks of that fd])} once fds sharing a description carry the same
    "desc". A description's lock is kept once, under the process that took it: on its own fd, or,
    for a flock lock whose taker closed its fd (CRIU's file_locks03: taken before fork, closed in
    the parent), on fd `fd` of process `of` that holds the description. A flock lock or lease
    whose taker is gone is kept on a holder's fd with "gone"; one whose taker is alive outside the
    tree, or a lease whose taker holds no fd of it, is refused (FdError)."""
    done: set = set()
    orphans: dict = {}
    kept: dict = {p["pid"]: [] for p in procs_doc}
    externals: dict = {}   # --external file KEY -> how many fds of the tree restore opens on it
    for p in procs_doc:
        for e in p["fds"]:
            if "external" in e:
                externals[e["external"]] = externals.get(e["external"], 0) + 1
    for p in procs_doc:
        pid = p["pid"]
        for e in p["fds"]:
            target, locks = seen.get((pid, e["fd"]), ("", ()))
            where = f"process {pid} fd {e['fd']} ({target})"
            desc = e.get("desc") or (pid, e["fd"])
            for lock in locks:
                same = (lock["type"], lock["mode"], lock["start"], lock["end"])
                if lock["type"] == "posix":
                    if lock["pid"] != pid:   # (a process sharing its fd table: CLONE_FILES)
                        raise FdError(errno.EOPNOTSUPP, f"{where}: {_show(lock)} of process {lock['pid']}, "
                                                        "which shares this fd table: not supported")
                    key = (pid, desc, same)
                else:
                    key = (desc, same)
                    if externals.get(e.get("external"), 0) > 1:
                        raise FdError(errno.EOPNOTSUPP, f"{where}: {_show(lock)} on an --external file several fds "
                                                        "hold: restore opens each on a description of its own")
                    if lock["type"] != "ofd" and lock["pid"] != pid:
                        orphans.setdefault(key, (where, lock, pid, e["fd"]))
                        continue
                if key not in done:
                    done.add(key)
                    kept[pid].append(_record(e["fd"], lock))
    for key, (where, lock, holder, fd) in orphans.items():
        if key in done:
            continue
        if lock["type"] == "flock" and lock["pid"] not in kept and not os.path.exists(f"/proc/{lock['pid']}"):
            # The shell's `exec 9>f; flock 9`: flock(1) took it and exited. The lock is the
            # description's; restore takes it in a process that then exits too (`gone`).
            done.add(key)
            kept[holder].append({**_record(fd, lock), "gone": True})
            continue
        if lock["type"] != "flock" or lock["pid"] not in kept:
            why = "holds no fd of that open file now" if lock["pid"] in kept else \
                "is alive outside the dumped tree"
            raise FdError(errno.EOPNOTSUPP, f"{where}: {_show(lock)} taken by process {lock['pid']}, which {why}: "
                                            "restore cannot take it again in that process's name")
        done.add(key)
        kept[lock["pid"]].append({**_record(fd, lock), "of": holder})
    for p in procs_doc:
        if kept[p["pid"]]:
            p["locks"] = kept[p["pid"]]
        else:
            p.pop("locks", None)


def _record(fd: int, lock: dict) -> dict:
    return {"fd": fd, "type": lock["type"], "mode": lock["mode"], "start": lock["start"], "end": lock["end"]}


def refuse_waiters(pids, held: set[str], text: str | None = None) -> None:
    """Refuse (FdError) a process of the tree (`pids`) waiting for a lock (/proc/locks "->" lines:
    CRIU cannot restore a blocked wait either). An OFD waiter shows no pid: on an inode the tree
    holds (`held`: "MAJ:MIN:INO" as /proc/locks writes them), the tree's processes blocked in a
    lock wait are looked for by their current syscall."""
    if text is None:
        with open("/proc/locks") as f:
            text = f.read()
    tree = set(pids)
    for line in text.splitlines():
        if "->" not in line:
            continue
        lock = parse(line)
        if lock["pid"] in tree:
            raise FdError(errno.EOPNOTSUPP, f"process {lock['pid']} waits for {_show(lock)} on inode "
                                            f"{lock['inode']}: a blocked lock wait cannot be restored")
        if lock["pid"] == -1 and lock["inode"] in held:
            for pid in tree:
                if _in_lock_wait(pid):
                    raise FdError(errno.EOPNOTSUPP, f"process {pid} waits for a lock (an OFD lock is waited "
                                                    f"for on inode {lock['inode']}): a blocked lock wait "
                                                    "cannot be restored")


def refuse_stopped_waiters(pids, held: set[str], before_stop: bool = False) -> None:
    """Once the tree is stopped: refuse (FdError) a process of it (`pids`), or a thread of one, that
    was blocked in a lock wait (flock, fcntl F_SETLKW / F_OFD_SETLKW) when it stopped. /proc/locks
    no longer tells: the stop interrupts the wait and takes the waiter off the lock's list (the call
    is made again on SIGCONT), but the interrupted call still shows in the task's syscall file. So
    a wait begun after `precheck` read /proc/locks is caught too, and no second read of /proc/locks
    (each waits for an RCU grace period in the kernel) is needed. A task stopped on its way out of
    a lock call that got its lock shows that call too: refused (dump again). An unknown machine
    (no syscall numbers): /proc/locks, as `refuse_waiters` reads it (`held`: the tree's inodes).
    `before_stop` (precheck): only the tasks stopped already (SIGSTOP before the dump), which
    /proc/locks does not show either, so that they are refused with the tree untouched."""
    from engine import threads   # (dump's: restore's stand-ins take locks without it)
    if _LOCK_SYSCALLS.get(os.uname().machine) is None:
        if not before_stop:
            refuse_waiters(pids, held)
        return
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue   # (gone: a zombie's, or reaped; told elsewhere)
        for tid in sorted(tids, key=lambda t: t != str(pid)):
            task = f"{pid}/task/{tid}"
            if before_stop and threads.task_state(task) not in ("T", "t"):
                continue
            call = _in_lock_wait(task)
            if call:
                who = f"process {pid}" if tid == str(pid) else f"process {pid} (thread {tid})"
                how = f"stopped while blocked in {call}" if before_stop else \
                    f"blocked in {call} when the tree stopped"
                raise FdError(errno.EOPNOTSUPP, f"{who} waits for a lock ({how}): a blocked lock wait cannot "
                                                "be restored")


def _in_lock_wait(task) -> str:
    """The lock call (flock, "fcntl F_SETLKW", "fcntl F_OFD_SETLKW") /proc/`task` ("PID" or
    "PID/task/TID") sleeps in or was stopped in, "" for none (unknown machine: "a lock call",
    assumed). A flock with LOCK_NB or LOCK_UN never waits."""
    nrs = _LOCK_SYSCALLS.get(os.uname().machine)
    if nrs is None:
        return "a lock call"
    try:
        with open(f"/proc/{task}/syscall") as f:
            words = f.read().split()
    except OSError:
        return ""
    if len(words) < 3 or not words[0].isdigit():
        return ""   # ("running", or "-1 SP PC": in no syscall)
    nr, arg = int(words[0]), int(words[2], 16)
    if nr == nrs[1]:
        return "" if arg & (fcntl.LOCK_NB | fcntl.LOCK_UN) else "flock"
    if nr == nrs[0] and arg in _WAIT_CMDS:
        return "fcntl F_SETLKW" if arg == fcntl.F_SETLKW else "fcntl F_OFD_SETLKW"
    return ""


def inode_key(dev: int, ino: int) -> str:
    """An inode as /proc/locks names it ("fe:00:1234")."""
    return f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"


_early: list | None = None   # read_early's [done lock, text or OSError], until proc_locks takes it


def read_early() -> None:
    """Start reading /proc/locks in a thread (dump's CLI does, before it imports the dump): a read of
    it waits in the kernel for an RCU grace period (locks_start takes file_rwsem for writing),
    5-20 ms of wall time and no CPU, which the imports and the first looks at the tree then cover.
    `proc_locks` takes the text; it must be taken before the first fork (a fork copies one thread)."""
    global _early
    done = _thread.allocate_lock()
    done.acquire()
    box = [done, None]

    def read():
        try:
            with open("/proc/locks") as f:
                box[1] = f.read()
        except OSError as e:
            box[1] = e
        finally:
            done.release()
    _thread.start_new_thread(read, ())
    _early = box


def proc_locks() -> str:
    """The text of /proc/locks: read_early's when one was started (waiting for it; taken once),
    else read now."""
    global _early
    box, _early = _early, None
    if box is None:
        with open("/proc/locks") as f:
            return f.read()
    box[0].acquire()
    if isinstance(box[1], OSError):
        raise box[1]
    return box[1]


def forget_early() -> None:
    """Wait for and drop read_early's text when no dump took it (it refused before its precheck)."""
    if _early is not None:
        proc_locks()


def precheck(pids: list[int], text: str | None = None) -> None:
    """Before the tree is stopped: refuse (FdError) the locks `settle` and `refuse_kind` would, and
    waiters. Only fds on an inode /proc/locks names are looked at (their fdinfo, and kcmp among
    them for shared descriptions); `text`: /proc/locks' (proc_locks) when taken already."""
    from engine.fds import sys as fsys
    if text is None:
        text = proc_locks()
    refuse_stopped_waiters(pids, set(), before_stop=True)
    locked = {line.split()[-3] for line in text.splitlines() if line.strip()}
    if not locked:
        return
    held: dict[str, list] = {}
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue   # (gone meanwhile: dump tells)
        for n in names:
            try:
                st = os.stat(f"/proc/{pid}/fd/{n}")
                key = inode_key(st.st_dev, st.st_ino)
            except OSError:
                continue
            if key in locked:
                held.setdefault(key, []).append((pid, int(n)))
    refuse_waiters(pids, set(held), text)
    procs = {pid: {"pid": pid, "fds": []} for pid in pids}
    seen: dict = {}
    ndesc = 0
    for members in held.values():
        groups: list[list] = []
        for pid, n in members:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{n}")
                with open(f"/proc/{pid}/fdinfo/{n}") as f:
                    lines = [v.strip() for k, _, v in (line.partition(":") for line in f) if k == "lock"]
                g = next((g for g in groups if fsys.same_file(g[0][0], g[0][1]["fd"], pid, n)), None)
            except OSError:
                continue
            seen[(pid, n)] = (target, fd_locks(lines, f"process {pid} fd {n} ({target})"))
            e = {"fd": n}
            procs[pid]["fds"].append(e)
            if g is None:
                groups.append([(pid, e)])
            else:
                g.append((pid, e))
        for g in groups:
            if len(g) > 1:
                for _, e in g:
                    e["desc"] = f"d-{ndesc}"
                ndesc += 1
    settle([procs[pid] for pid in pids], seen)


# --- restore ---------------------------------------------------------------------------------

def _flock_struct(lock: dict) -> bytes:
    kind = fcntl.F_RDLCK if lock["mode"] == "read" else fcntl.F_WRLCK
    length = 0 if lock["end"] is None else lock["end"] - lock["start"] + 1
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, lock["start"], length, 0)


def _lease(fd: int, kind: int) -> None:
    """F_SETLEASE as the file's owner: the kernel lets its owner (fsuid) or a holder of CAP_LEASE in
    the initial user namespace take a lease, and a stand-in inside a user namespace has only the
    first way (it may set its fsuid to any id mapped there, as the lease's taker had it)."""
    import ctypes
    setfsuid = ctypes.CDLL(None).setfsuid
    owner = os.fstat(fd).st_uid
    old = setfsuid(-1)   # (an invalid id changes nothing: the current fsuid)
    if old == owner:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, kind)
        return
    setfsuid(owner)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, kind)
    finally:
        setfsuid(old)


def take(locks: list[dict], fds: list[int]) -> None:
    """In a stand-in: take each lock of the image's process entry on its (installed) fd, or on
    fds[lock["sent"]] (a description another process holds: `of`), without waiting: a conflict
    (someone outside the tree holds it now) fails the restore, naming it."""
    for lock in locks:
        fd = lock["fd"] if lock.get("sent") is None else fds[lock["sent"]]
        try:
            if lock["type"] == "flock":
                fcntl.flock(fd, (fcntl.LOCK_SH if lock["mode"] == "read" else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            elif lock["type"] == "lease":
                _lease(fd, fcntl.F_RDLCK if lock["mode"] == "read" else fcntl.F_WRLCK)
            else:
                fcntl.fcntl(fd, fcntl.F_SETLK if lock["type"] == "posix" else _F_OFD_SETLK, _flock_struct(lock))
        except OSError as e:
            of = f" of process {lock['of']}" if "of" in lock else ""
            raise OSError(e.errno, f"fd {lock['fd']}{of}: {_show(lock)}: {e.strerror}") from None
