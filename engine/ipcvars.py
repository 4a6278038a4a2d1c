"""The own limits of the tree's ipc namespaces: their sysctls (/proc/sys/kernel/msgmax, sem,
shm_next_id..., /proc/sys/fs/mqueue/msg_max...), each namespace's own (CRIU keeps them too).

A container that raised msgmax or mqueue's msg_max and holds a message or a queue that needs it
dumped fine and failed at restore, or restored with a fresh namespace's limits: its later sends got
EINVAL or EMSGSIZE where they did not before. Dump reads them with its thread joined to the
namespace (engine/sysvipc.py `joined`: a sysctl of the ipc namespace is the reader's) and keeps
those that differ from a fresh namespace's (`VARS`). Restore writes them in the new namespace from
its helper there, in two steps: before the objects, each limit raised to what the objects need
(`before`: msg_max before a queue longer than the default, msgmax before a long message; the
restorer has no CAP_SYS_RESOURCE to pass them otherwise), after them each one as dumped (`after`: a
limit the objects exceed once it was lowered, the *_next_id ones, which making an object resets to
-1, and shm_rmid_forced).

Root of the namespace's owning user namespace writes them all within the kernel's bounds (restore
writes as that root, the files' owner, when the namespace is a user namespace's: the host's root
may not), the *_next_id ones with CAP_CHECKPOINT_RESTORE there. Refused before the stop, one line: a value out of
those bounds (the validator's, `check`), and shm_rmid_forced with a segment in the namespace (a
restored segment is attached nowhere: writing it would remove them). Not kept: auto_msgmni (a no-op
that reads 0), and what the kernel keeps unseen (the next id it picks when no *_next_id is set).

Image (in the namespace's "sysvipc" entry): "vars": {"kernel/NAME" or "fs/mqueue/NAME": int, and
"kernel/sem": [semmsl, semmns, semopm, semmni]}.
"""

from __future__ import annotations

import errno
import os

from engine.sysvipc import IpcError, as_ids, b64_size, int_in

_INT_MAX, _INT_MIN = (1 << 31) - 1, -(1 << 31)
_ULONG_MAX = (1 << 64) - 1
# The kernel's bound of msgmni, shmmni and semmni (IPCMNI: 32768; 1 << 24 booted with ipcmni_extend)
_MNI = 1 << 24
_HARD_MSGMAX, _HARD_MSGSIZEMAX = 65536, 16 << 20

# name under /proc/sys -> (a fresh namespace's value, lowest, highest the kernel takes)
VARS = {
    "kernel/msgmax": (8192, 0, _INT_MAX),
    "kernel/msgmnb": (16384, 0, _INT_MAX),
    "kernel/msgmni": (32000, 0, _MNI),
    # (semmsl, semmns, semopm: any int, even one no semget passes; semmni: 0.._MNI)
    "kernel/sem": ([32000, 1024000000, 500, 32000], _INT_MIN, _INT_MAX),
    "kernel/shmmax": (_ULONG_MAX - (1 << 24), 0, _ULONG_MAX),
    "kernel/shmall": (_ULONG_MAX - (1 << 24), 0, _ULONG_MAX),
    "kernel/shmmni": (4096, 0, _MNI),
    "kernel/shm_rmid_forced": (0, 0, 1),
    "kernel/msg_next_id": (-1, 0, _INT_MAX),   # (-1, unset, is a fresh namespace's and cannot be written)
    "kernel/sem_next_id": (-1, 0, _INT_MAX),
    "kernel/shm_next_id": (-1, 0, _INT_MAX),
    "fs/mqueue/msg_max": (10, 1, _HARD_MSGMAX),
    "fs/mqueue/msgsize_max": (8192, 128, _HARD_MSGSIZEMAX),
    "fs/mqueue/queues_max": (256, _INT_MIN, _INT_MAX),   # (below 0: only CAP_SYS_RESOURCE makes queues)
    "fs/mqueue/msg_default": (10, 1, _HARD_MSGMAX),
    "fs/mqueue/msgsize_default": (8192, 128, _HARD_MSGSIZEMAX),
}
# Written after the objects only: making an object resets a *_next_id; shm_rmid_forced removes
# segments attached nowhere (every restored one) when it is set.
_LATE = {"kernel/msg_next_id", "kernel/sem_next_id", "kernel/shm_next_id", "kernel/shm_rmid_forced"}


def _valid(name: str, v) -> bool:
    """Is `v` a value of `name` the kernel takes?"""
    _fresh, lo, hi = VARS[name]
    if name == "kernel/sem":
        return type(v) is list and len(v) == 4 and all(int_in(x, lo, hi) for x in v[:3]) and int_in(v[3], 0, _MNI)
    return int_in(v, lo, hi)


def _read_one(proc: int, name: str):
    fd = os.open(f"sys/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        words = [int(w) for w in os.read(fd, 256).split()]
    finally:
        os.close(fd)
    return words if name == "kernel/sem" else words[0]


def values(proc: int) -> dict:
    """In the namespace (joined by this thread): every one of `VARS` as it is now."""
    return {name: _read_one(proc, name) for name in VARS}


def read_here(proc: int, segments: bool) -> dict:
    """In the namespace (joined): its values that differ from a fresh namespace's; IpcError (one
    line) for one an image cannot keep, or shm_rmid_forced when `segments` (it has some)."""
    out = {}
    for name, v in values(proc).items():
        if v == VARS[name][0]:
            continue
        if not _valid(name, v):
            raise IpcError(errno.EOPNOTSUPP, f"ipc namespace sysctl {name} = {v}: out of what an image keeps: "
                                             "not supported")
        out[name] = v
    if out.get("kernel/shm_rmid_forced") and segments:
        raise IpcError(errno.EOPNOTSUPP, "ipc namespace with kernel.shm_rmid_forced = 1 and System V shared memory "
                                         "segments: restore makes the segments before any process attaches them, so "
                                         "they would be removed; not supported")
    return out


def _need(doc: dict) -> dict:
    """What the objects of `doc` need of the limits while restore makes them."""
    shm, sem, msg, mq = (doc.get(k) or () for k in ("shm", "sem", "msg", "mqueue"))
    sizes = [b64_size(m[1], "", None) for q in msg for m in q["msgs"]]
    return {
        "kernel/msgmax": max(sizes, default=0),
        # (a queue's own msg_qbytes past msgmnb takes CAP_SYS_RESOURCE to set: msgmnb raised to it)
        "kernel/msgmnb": max((max(q.get("qbytes", 0), sum(b64_size(m[1], "", None) for m in q["msgs"])) for q in msg),
                             default=0),
        "kernel/msgmni": len(msg),
        "kernel/shmmni": len(shm),
        "kernel/shmmax": max((r["size"] for r in shm), default=0),
        "kernel/shmall": sum(-(-r["size"] // os.sysconf("SC_PAGE_SIZE")) for r in shm),
        "kernel/sem": [max((len(r["vals"]) for r in sem), default=0), sum(len(r["vals"]) for r in sem), 0, len(sem)],
        "fs/mqueue/msg_max": max((q["maxmsg"] for q in mq), default=0),
        "fs/mqueue/msgsize_max": max((q["msgsize"] for q in mq), default=0),
        "fs/mqueue/queues_max": len(mq),
    }


def _put(proc: int, name: str, text: bytes) -> None:
    fd = os.open(f"sys/{name}", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        os.write(fd, text)
    finally:
        os.close(fd)


def _write(proc: int, name: str, v) -> None:
    """Write `v` into sysctl `name` of this process's ipc namespace; IpcError (one line) when the
    kernel refuses it."""
    text = (" ".join(map(str, v)) if name == "kernel/sem" else str(v)).encode()
    try:
        try:
            _put(proc, name, text)
        except PermissionError:
            # A namespace a user namespace owns: its sysctls are that namespace's root's to write
            # (the files are its), not the host's root's (the *_next_id ones take our
            # CAP_CHECKPOINT_RESTORE instead: the first try)
            st = os.stat(f"sys/{name}", dir_fd=proc)
            as_ids(st.st_uid, st.st_gid, lambda: _put(proc, name, text))
    except OSError as e:
        raise IpcError(e.errno, f"ipc namespace sysctl {name} = {v}: {e.strerror}") from None


def _first(name: str, dumped, need):
    """The value written before the objects: the dumped one, raised to what they need."""
    if name == "kernel/sem":
        return [max(a, b) for a, b in zip(dumped, need)]
    return max(dumped, need)


def before(proc: int, doc: dict) -> dict:
    """In a fresh namespace, before its objects: each limit as dumped, raised to what the objects
    of `doc` need. Returns what was written."""
    kept, need = doc.get("vars") or {}, _need(doc)
    done = {}
    for name, (fresh, _lo, _hi) in VARS.items():
        if name in _LATE:
            continue
        v = _first(name, kept.get(name, fresh), need.get(name, fresh))
        if v != fresh:
            _write(proc, name, v)
            done[name] = v
    return done


def after(proc: int, doc: dict, written: dict) -> None:
    """After the objects: each value as dumped (`written`: what `before` wrote)."""
    for name, v in (doc.get("vars") or {}).items():
        if name in _LATE or written.get(name) != v:
            _write(proc, name, v)
    for name, v in written.items():   # (raised for the objects only: back to a fresh namespace's)
        if name not in (doc.get("vars") or {}):
            _write(proc, name, VARS[name][0])


def check(kept, objs: dict, what: str, fail) -> None:
    """The validator's rule for a namespace's "vars": known names, values the kernel takes; no
    shm_rmid_forced with segments (restore would remove them)."""
    if type(kept) is not dict or not set(kept) <= set(VARS):
        fail(f"{what}: must be an object of {', '.join(sorted(VARS))}")
    for name, v in kept.items():
        if not _valid(name, v):
            lo, hi = VARS[name][1:]
            fail(f"{what} {name}: out of range ({lo}..{hi}" + (f", four of them, the last 0..{_MNI})" if name == "kernel/sem"
                                                              else ")"))
    if kept.get("kernel/shm_rmid_forced") and objs.get("shm"):
        fail(f"{what}: kernel/shm_rmid_forced with segments (restore would remove them)")


def of_process(pid: int) -> dict:
    """Every one of `VARS` of process `pid`'s ipc namespace, read by this thread joined to it (the
    snapshot's comparison)."""
    from engine.sysvipc import in_ipc_of
    return in_ipc_of(pid, values)
