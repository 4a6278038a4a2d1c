"""System V IPC objects of the tree's own ipc namespaces: shared memory segments (with their
contents), semaphore sets (with their values) and message queues (with their messages).

They belong to the ipc namespace, not to a process: busybox syslogd -C keeps its log in a segment
and guards it with a semaphore set (logread reads them), PostgreSQL keeps an interlock segment.
A restore that made the namespace empty lost them silently. Dump reads them with its thread joined
to the namespace and back (/proc/sysvipc lists the reader's namespace; shmat, semctl GETALL and msgrcv
MSG_COPY read without consuming); restore makes each one again in the restored namespace with the
same key and id (the namespace's *_next_id sysctls, as CRIU does), created by its creator's ids
(cuid, cgid) and mode, given its owner's (IPC_SET) when they differ, and filled.

Its POSIX message queues likewise (engine/posixmq.py).

The namespace's own limits (msgmax, shmmax, mqueue's msg_max...) likewise (engine/ipcvars.py),
written before its objects are made and set as dumped after.

Attachments are the processes' (engine/shmattach.py: each stand-in attaches what its process
did, so nattch is kept). Not restored: the times and the
pids of the last operations, semaphore undo lists, the id the kernel would give the next object
made without a *_next_id (its cyclic cursor and sequence number are kernel state no interface
shows: a namespace whose objects were removed may give a new one another id after a restore).
A segment
already removed (IPC_RMID while attached) goes with its last detach, and is left out. Ids are as
the dumper's user namespace names them.

Image: "sysvipc": {ipc-N: {"shm": [SHM], "sem": [SEM], "msg": [MSG], "vars": {...}}}, each object with key, id,
mode (0..0o777), uid, gid, cuid, cgid; SHM with size and data (base64, at most `MAX_BYTES` in all) and locked (true: SHM_LOCK, made again; absent: not),
SEM with vals (nsems values, each 0..32767), MSG with msgs [[mtype >= 1, base64 text]] and qbytes
(its msg_qbytes, set with IPC_SET after its messages; absent in older images); and
"mqueue": [{name, mode, uid, gid, maxmsg, msgsize, msgs [[priority, base64 text]]}].
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import ctypes
import errno
import os

from engine import forkrun, kernel

MAX_OBJECTS = 4096          # per kind and namespace (the kernel's default limits allow 32000 each)
MAX_BYTES = 64 << 20        # segment contents and messages together, per image
# Semaphores of all sets together, per image: restore makes each (a kernel struct sem, a cache line),
# and the kernel's own bound (semmns) is 1,024,000,000, far past what memory holds.
MAX_SEMS = 1 << 20
_MSG_MAX = 1 << 20          # one message's text (msgmax is 8192 by default)

_IPC_CREAT, _IPC_EXCL, _IPC_NOWAIT = 0o1000, 0o2000, 0o4000
_IPC_RMID, _IPC_SET, _IPC_STAT = 0, 1, 2
_GETALL, _SETALL = 13, 17
_MSG_COPY = 0o40000
_SHM_RDONLY = 0o10000
_SHM_DEST = 0o1000          # in a segment's perms: removed, gone with its last detach
_SHM_LOCKED, _SHM_LOCK = 0o2000, 11   # in a segment's perms: its pages kept in memory (shmctl SHM_LOCK)
# struct msqid_ds (64-bit): ipc_perm (48 bytes), three times, cbytes, qnum, then msg_qbytes
_QBYTES_AT = 88
_INT_MAX = (1 << 31) - 1    # what msgmnb, which restore raises to set a queue's msg_qbytes, can hold

_libc = ctypes.CDLL(None, use_errno=True)
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmdt.argtypes = (ctypes.c_void_p,)
_libc.shmget.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.c_int)
_libc.msgrcv.restype = ctypes.c_ssize_t
_libc.msgrcv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int)
_libc.msgsnd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class IpcError(OSError):
    """An object that cannot be dumped or made again; one line."""


_MAP_FAILED = ctypes.c_void_p(-1).value


def checked(ret, what: str):
    """`ret` of a C library call, or IpcError naming `what` with its errno when it failed (-1, NULL,
    MAP_FAILED)."""
    if ret == -1 or ret is None or ret == _MAP_FAILED:
        e = ctypes.get_errno()
        raise IpcError(e, f"{what}: {os.strerror(e)}")
    return ret


def _table(proc: int, name: str) -> list[dict]:
    """The rows of /proc/sysvipc/NAME (of the reader's ipc namespace), by their header's names."""
    with open(os.open(f"sysvipc/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)) as f:
        head, *rows = f.read().splitlines()
    keys = head.split()
    # (perms is printed in octal, the rest in decimal)
    return [{k: int(v, 8 if k == "perms" else 10) for k, v in zip(keys, row.split())} for row in rows if row.strip()]


def qbytes(msqid: int) -> int:
    """The most bytes message queue `msqid` takes (its msg_qbytes: the namespace's msgmnb when it
    was made, or what IPC_SET gave it), read with IPC_STAT; IpcError when it is more than restore
    can give again (msgmnb's bound, INT_MAX)."""
    buf = ctypes.create_string_buffer(512)
    checked(_libc.msgctl(msqid, _IPC_STAT, buf), f"msgctl IPC_STAT of message queue {msqid}")
    got = ctypes.c_ulong.from_buffer(buf, _QBYTES_AT).value
    if got > _INT_MAX:
        raise IpcError(errno.EOPNOTSUPP, f"System V message queue {msqid}: msg_qbytes {got} is more than restore "
                                         f"can give again ({_INT_MAX}, what msgmnb holds); not supported")
    return got


def _ids(row: dict, idkey: str) -> dict:
    return {"key": row["key"] & 0xffffffff, "id": row[idkey], "mode": row["perms"] & 0o777,
            "uid": row["uid"], "gid": row["gid"], "cuid": row["cuid"], "cgid": row["cgid"]}


def _read_here(proc: int, outsider=None) -> dict:
    """In the namespace (joined): its objects (see the module's image format); `outsider()`: a
    process outside the tree in the namespace or None (posixmq.read_here refuses its full queues)."""
    out: dict = {}
    from engine import posixmq   # (it imports this module)
    queues = posixmq.read_here(outsider=outsider)
    if queues:
        out["mqueue"] = queues
    total = 0
    shms = []
    for row in _table(proc, "shm"):
        if row["perms"] & _SHM_DEST:
            continue
        rec = _ids(row, "shmid")
        rec["size"] = row["size"]
        if row["perms"] & _SHM_LOCKED:
            rec["locked"] = True
        total += row["size"]
        if total > MAX_BYTES:
            raise IpcError(errno.EFBIG, f"System V shared memory segment {row['shmid']}: more than "
                                        f"{MAX_BYTES >> 20} MiB of segments in the tree's ipc namespaces")
        addr = checked(_libc.shmat(row["shmid"], None, _SHM_RDONLY), f"shmat of segment {row['shmid']}")
        try:
            rec["data"] = binascii.b2a_base64(ctypes.string_at(addr, row["size"]), newline=False).decode()
        finally:
            _libc.shmdt(ctypes.c_void_p(addr))
        shms.append(rec)
    sems = []
    for row in _table(proc, "sem"):
        rec = _ids(row, "semid")
        vals = (ctypes.c_ushort * row["nsems"])()
        checked(_libc.semctl(row["semid"], 0, _GETALL, vals), f"semctl GETALL of semaphore set {row['semid']}")
        rec["vals"] = list(vals)
        sems.append(rec)
    msgs = []
    buf = ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_long) + _MSG_MAX)
    for row in _table(proc, "msg"):
        rec = _ids(row, "msqid")
        rec["qbytes"] = qbytes(row["msqid"])
        rec["msgs"] = []
        for n in range(row["qnum"]):
            got = checked(_libc.msgrcv(row["msqid"], buf, _MSG_MAX, n, _IPC_NOWAIT | _MSG_COPY),
                         f"msgrcv MSG_COPY of message queue {row['msqid']}")
            total += got
            if total > MAX_BYTES:
                raise IpcError(errno.EFBIG, f"System V message queue {row['msqid']}: more than "
                                            f"{MAX_BYTES >> 20} MiB of segments and messages in the tree's ipc namespaces")
            mtype = ctypes.c_long.from_buffer(buf).value
            body = buf.raw[ctypes.sizeof(ctypes.c_long):][:got]
            rec["msgs"].append([mtype, binascii.b2a_base64(body, newline=False).decode()])
        msgs.append(rec)
    total += sum(len(binascii.a2b_base64(m[1])) for q in queues for m in q["msgs"])
    if total > MAX_BYTES:
        raise IpcError(errno.EFBIG, f"more than {MAX_BYTES >> 20} MiB of System V shared memory, messages and "
                                    "POSIX messages in the tree's ipc namespaces")
    from engine import ipcvars
    kept = ipcvars.read_here(proc, bool(shms))
    if kept:
        out["vars"] = kept
    for kind, objs in (("shm", shms), ("sem", sems), ("msg", msgs)):
        if len(objs) > MAX_OBJECTS:
            raise IpcError(errno.EOPNOTSUPP, f"{len(objs)} System V {kind} objects in one ipc namespace: at most "
                                             f"{MAX_OBJECTS}")
        if objs:
            out[kind] = objs
    return out


def read(pid: int, tree=()) -> dict:
    """The System V IPC objects of process `pid`'s ipc namespace ({} when there are none); `tree`:
    the tree's pids (a process outside it in the namespace: its full POSIX queues are refused)."""
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ns = os.open(f"{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            ino = os.fstat(ns).st_ino
            outsider = (lambda: kernel.ns_outsider("ipc", ino, set(tree) | {pid})) if tree else None
            return joined(ns, proc, lambda: _read_here(proc, outsider))
        finally:
            os.close(ns)
    finally:
        os.close(proc)


def _describe_here(proc: int) -> list[str]:
    """In the namespace (joined): one line per System V object, what a restore must give back and
    a running program does not change by itself (its key, id, mode, owner and creator; a segment's
    size and how many mappings attach it, a set's number of semaphores, a queue's messages, bytes
    and msg_qbytes)."""
    out = []
    for kind, idkey, more in (("shm", "shmid", ("size",)), ("sem", "semid", ("nsems",)),
                              ("msg", "msqid", ("qnum", "cbytes"))):
        for row in _table(proc, kind):
            if kind == "shm" and row["perms"] & _SHM_DEST:
                continue
            rec = _ids(row, idkey)
            words = [f"{k}={rec[k]:o}" if k == "mode" else f"{k}={rec[k]}" for k in sorted(rec)]
            words += [f"{k}={row[k]}" for k in more] + (["locked"] if kind == "shm" and row["perms"] & _SHM_LOCKED else [])
            if kind == "shm":
                words.append(f"nattch={row['nattch']}")   # (attachments, by the tree's processes: engine/shmattach.py)
            if kind == "msg":
                buf = ctypes.create_string_buffer(512)
                words.append(f"qbytes={ctypes.c_ulong.from_buffer(buf, _QBYTES_AT).value}"
                             if _libc.msgctl(row["msqid"], _IPC_STAT, buf) == 0 else "qbytes=?")
            out.append(f"{kind} " + " ".join(words))
    return sorted(out)


def describe(pid: int) -> list[str]:
    """The System V objects of process `pid`'s ipc namespace, one line each (`_describe_here`): the
    snapshot's comparison."""
    return in_ipc_of(pid, _describe_here)


def in_ipc_of(pid: int, read):
    """read(proc_fd) run by this thread joined to process `pid`'s ipc namespace (`joined`)."""
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ns = os.open(f"{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            return joined(ns, proc, lambda: read(proc))
        finally:
            os.close(ns)
    finally:
        os.close(proc)


def joined(ns: int, proc: int, fn):
    """fn() run in the ipc namespace `ns` by this thread, which joins it and goes back to its own
    after: no helper to fork (~2 ms and a copy-on-write of the dump's pages each). Joining an ipc
    namespace changes what System V calls, /proc/sysvipc opened meanwhile and a new mqueue
    superblock see, nothing else a dump does; `fn` leaves nothing attached (shmat is undone)."""
    own = os.open("thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        kernel.setns(ns, kernel.CLONE_NEWIPC)
        try:
            return fn()
        finally:
            kernel.setns(own, kernel.CLONE_NEWIPC)
    finally:
        os.close(own)


def _limits_here(proc: int, outsider) -> int:
    """In the namespace (joined): refuse more objects or bytes than an image keeps (_read_here's
    limits, from the tables alone), POSIX message queues someone is notified on, and a full one when
    `outsider()` (a process outside the tree, or None) is in the namespace. Returns its number of semaphores."""
    from engine import ipcvars, posixmq
    posixmq.read_here(limits_only=True, outsider=outsider)
    kept = ipcvars.read_here(proc, any(not r["perms"] & _SHM_DEST for r in _table(proc, "shm")))
    _long_messages(proc, kept.get("kernel/msgmax", ipcvars.VARS["kernel/msgmax"][0]))
    total = sems = 0
    for kind, size in (("shm", "size"), ("sem", None), ("msg", "cbytes")):
        rows = _table(proc, kind)
        if len(rows) > MAX_OBJECTS:
            raise IpcError(errno.EOPNOTSUPP, f"{len(rows)} System V {kind} objects in one ipc namespace: at most "
                                             f"{MAX_OBJECTS}")
        total += sum(r[size] for r in rows if size and not (kind == "shm" and r["perms"] & _SHM_DEST))
        for r in rows if kind == "msg" else ():
            qbytes(r["msqid"])
        sems += sum(r["nsems"] for r in rows) if kind == "sem" else 0
    if total > MAX_BYTES:
        raise IpcError(errno.EFBIG, f"more than {MAX_BYTES >> 20} MiB of System V shared memory and messages in "
                                    "an ipc namespace of the tree")
    return sems


def _long_messages(proc: int, msgmax: int) -> None:
    """In the namespace (joined), before the stop: refuse a System V message dump cannot read, one
    longer than the namespace's msgmax (lowered after it was sent: MSG_COPY copies at most msgmax)
    or than `_MSG_MAX`. Only a queue with more bytes than that in all may hold one."""
    limit = min(msgmax, _MSG_MAX)
    buf = None
    for row in _table(proc, "msg"):
        if row["cbytes"] <= limit:
            continue
        buf = buf or ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_long) + _MSG_MAX)
        for n in range(row["qnum"]):
            if _libc.msgrcv(row["msqid"], buf, _MSG_MAX, n, _IPC_NOWAIT | _MSG_COPY) >= 0:
                continue
            e = ctypes.get_errno()
            if e == errno.ENOMSG:
                break   # (taken meanwhile: the rest are as many fewer)
            if e != errno.EINVAL:
                checked(-1, f"msgrcv MSG_COPY of message queue {row['msqid']}")
            why = "the namespace's msgmax, lowered after it was sent" if limit == msgmax else "what an image keeps"
            raise IpcError(errno.EOPNOTSUPP, f"System V message queue {row['msqid']} holds a message longer than "
                                             f"{limit} bytes ({why}): dump cannot read it; not supported")


def precheck(pids: list[int]) -> None:
    """Before the stop: refuse an ipc namespace of the tree (not the dumper's) whose objects an
    image cannot keep (_limits_here), and more than MAX_SEMS semaphores in all; IpcError says why."""
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mine = os.stat("self/ns/ipc", dir_fd=proc).st_ino
        seen = {mine}
        sems = 0
        for pid in pids:
            try:
                ns = os.open(f"{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
            except OSError:
                continue   # (gone meanwhile: dump tells, once the tree is stopped)
            try:
                ino = os.fstat(ns).st_ino
                if ino in seen:
                    continue
                seen.add(ino)
                sems += joined(ns, proc, lambda: _limits_here(proc, lambda: kernel.ns_outsider("ipc", ino, set(pids))))
            finally:
                os.close(ns)
        if sems > MAX_SEMS:
            raise IpcError(errno.EOPNOTSUPP, f"{sems} System V semaphores in the tree's ipc namespaces: at most "
                                             f"{MAX_SEMS}")
    finally:
        os.close(proc)


def _next_id(proc: int, kind: str, value: int) -> None:
    fd = os.open(f"sys/kernel/{kind}_next_id", os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def as_ids(uid: int, gid: int, fn):
    """fn() with effective ids uid, gid (an object's creator), ours again after it."""
    os.setresgid(-1, gid, -1)
    os.setresuid(-1, uid, -1)
    try:
        return fn()
    finally:
        os.setresuid(-1, 0, -1)
        os.setresgid(-1, 0, -1)


def _owner(ctl, ident: int, rec: dict, what: str) -> None:
    """Give the object its owner (IPC_SET) when it is not its creator, and a message queue its
    msg_qbytes: struct ipc_perm starts with the key, uid and gid (ints) on every architecture; the
    rest is what IPC_STAT read. (A queue's qbytes past msgmnb needs CAP_SYS_RESOURCE: ipcvars
    raised msgmnb to it meanwhile.)"""
    if (rec["uid"], rec["gid"]) == (rec["cuid"], rec["cgid"]) and "qbytes" not in rec:
        return
    buf = ctypes.create_string_buffer(512)
    checked(ctl(ident, _IPC_STAT, buf), f"{what}: IPC_STAT")
    ctypes.c_uint.from_buffer(buf, 4).value = rec["uid"]
    ctypes.c_uint.from_buffer(buf, 8).value = rec["gid"]
    if "qbytes" in rec:
        ctypes.c_ulong.from_buffer(buf, _QBYTES_AT).value = rec["qbytes"]
    checked(ctl(ident, _IPC_SET, buf), f"{what}: IPC_SET")


def _key(rec: dict) -> int:
    """The object's key as key_t (an int) takes it."""
    return rec["key"] - (1 << 32) if rec["key"] >= 1 << 31 else rec["key"]


def _make_here(proc: int, doc: dict) -> None:
    """In a child in the new namespace: every object of `doc`, with its key, id, owner and contents."""
    shmctl = lambda i, cmd, buf: _libc.shmctl(i, cmd, buf)   # noqa: E731
    semctl = lambda i, cmd, buf: _libc.semctl(i, 0, cmd, buf)   # noqa: E731
    msgctl = lambda i, cmd, buf: _libc.msgctl(i, cmd, buf)   # noqa: E731
    from engine import ipcvars, posixmq
    written = ipcvars.before(proc, doc)   # (limits first: msgmax before a long message...)
    # (the kernel takes a *_next_id once, for the next object of its kind, then forgets it: -1;
    # writing -1 is refused)
    for rec in doc.get("shm") or ():
        what = f"System V shared memory segment {rec['id']}"
        _next_id(proc, "shm", rec["id"])
        got = as_ids(rec["cuid"], rec["cgid"], lambda: checked(
            _libc.shmget(_key(rec), rec["size"], _IPC_CREAT | _IPC_EXCL | rec["mode"]), f"{what}: shmget"))
        if got != rec["id"]:
            raise IpcError(errno.EEXIST, f"{what}: made as {got}")
        data = binascii.a2b_base64(rec["data"])
        addr = checked(_libc.shmat(got, None, 0), f"{what}: shmat")
        try:
            ctypes.memmove(addr, data, min(len(data), rec["size"]))
        finally:
            _libc.shmdt(ctypes.c_void_p(addr))
        if rec.get("locked"):
            checked(_libc.shmctl(got, _SHM_LOCK, None), f"{what}: shmctl SHM_LOCK")
        _owner(shmctl, got, rec, what)
    for rec in doc.get("sem") or ():
        what = f"System V semaphore set {rec['id']}"
        _next_id(proc, "sem", rec["id"])
        got = as_ids(rec["cuid"], rec["cgid"], lambda: checked(
            _libc.semget(_key(rec), len(rec["vals"]), _IPC_CREAT | _IPC_EXCL | rec["mode"]), f"{what}: semget"))
        if got != rec["id"]:
            raise IpcError(errno.EEXIST, f"{what}: made as {got}")
        vals = (ctypes.c_ushort * len(rec["vals"]))(*rec["vals"])
        checked(_libc.semctl(got, 0, _SETALL, vals), f"{what}: semctl SETALL")
        _owner(semctl, got, rec, what)
    for rec in doc.get("msg") or ():
        what = f"System V message queue {rec['id']}"
        _next_id(proc, "msg", rec["id"])
        got = as_ids(rec["cuid"], rec["cgid"], lambda: checked(
            _libc.msgget(_key(rec), _IPC_CREAT | _IPC_EXCL | rec["mode"]), f"{what}: msgget"))
        if got != rec["id"]:
            raise IpcError(errno.EEXIST, f"{what}: made as {got}")
        for mtype, text in rec["msgs"]:
            body = binascii.a2b_base64(text)
            buf = ctypes.create_string_buffer(ctypes.sizeof(ctypes.c_long) + len(body))
            ctypes.c_long.from_buffer(buf).value = mtype
            ctypes.memmove(ctypes.addressof(buf) + ctypes.sizeof(ctypes.c_long), body, len(body))
            checked(_libc.msgsnd(got, buf, len(body), _IPC_NOWAIT), f"{what}: msgsnd")
        _owner(msgctl, got, rec, what)
    posixmq.make_here(doc.get("mqueue") or ())
    ipcvars.after(proc, doc, written)


def make(ns_fd: int, doc: dict, hostproc: int) -> None:
    """Make the objects of `doc` in the (new, empty) ipc namespace `ns_fd`; IpcError names one that fails."""
    def body():
        kernel.setns(ns_fd, kernel.CLONE_NEWIPC)
        _make_here(hostproc, doc)
    forkrun.run(body)


def int_in(v, lo: int, hi: int) -> bool:
    """Is `v` an int (not a bool) in lo..hi? (the validator's test of a count or an id)"""
    return type(v) is int and lo <= v <= hi


def b64_size(text: str, what: str, fail) -> int:
    """The size of base64 `text` decoded; `fail` (one line naming `what`) when it is not base64."""
    try:
        return len(binascii.a2b_base64(text, strict_mode=True))
    except ValueError:
        fail(f"{what}: contents are not base64")


def check(doc, ns_used: set, fail) -> None:
    """The validator's rule for the image's "sysvipc": per ipc namespace a process is in, objects of
    the three kinds with ids, owners and contents in range, each id once per kind, at most
    MAX_BYTES of contents and MAX_SEMS semaphores in all. `fail(text)` raises."""
    if type(doc) is not dict:
        fail("sysvipc: must be an object")
    total = sems = 0
    bound = f"sysvipc: more than {MAX_BYTES >> 20} MiB of contents"
    for nsid, objs in doc.items():
        if nsid not in ns_used or type(objs) is not dict or not set(objs) <= {"shm", "sem", "msg", "mqueue", "vars"}:
            fail(f"sysvipc of {str(nsid)[:40]!r}: an ipc namespace no process is in, or kinds other than shm, sem, "
                 "msg, mqueue, vars")
        from engine import ipcvars, posixmq
        total += posixmq.check(objs.get("mqueue", []), f"sysvipc {nsid} mqueue", fail)
        ipcvars.check(objs.get("vars", {}), objs, f"sysvipc {nsid} vars", fail)
        for kind, recs in objs.items():
            if kind in ("mqueue", "vars"):
                continue
            what = f"sysvipc {nsid} {kind}"
            if type(recs) is not list or len(recs) > MAX_OBJECTS:
                fail(f"{what}: must be a list of at most {MAX_OBJECTS} objects")
            seen, keys = set(), set()
            for rec in recs:
                extra = {"shm": {"size", "data"}, "sem": {"vals"}, "msg": {"msgs"}}[kind]
                # (a queue's qbytes, a segment's locked: images before session 20 lack them)
                if type(rec) is not dict or set(rec) - {"qbytes", "locked"} != {"key", "id", "mode", "uid", "gid", "cuid", "cgid"} | extra \
                        or ("qbytes" in rec and (kind != "msg" or not int_in(rec["qbytes"], 0, _INT_MAX))) \
                        or ("locked" in rec and (kind != "shm" or rec["locked"] is not True)):
                    fail(f"{what}: an object must have exactly key, id, mode, uid, gid, cuid, cgid, "
                         f"{', '.join(sorted(extra))}" + {"msg": ", qbytes? (0..2^31-1)", "shm": ", locked? (true)"}.get(kind, ""))
                if not (int_in(rec["key"], 0, 0xffffffff) and int_in(rec["id"], 0, 0x7fffffff) and int_in(rec["mode"], 0, 0o777)
                        and all(int_in(rec[k], 0, 0xfffffffe) for k in ("uid", "gid", "cuid", "cgid"))):
                    fail(f"{what}: bad key, id, mode or ids")
                if rec["id"] in seen:
                    fail(f"{what}: id {rec['id']} twice")
                seen.add(rec["id"])
                # (a key other than IPC_PRIVATE names one object of its kind: a second one's IPC_EXCL
                # get fails once the namespace is half made)
                if rec["key"] and rec["key"] in keys:
                    fail(f"{what}: key {rec['key']} twice")
                keys.add(rec["key"])
                if kind == "shm":
                    if not int_in(rec["size"], 1, MAX_BYTES) or type(rec["data"]) is not str \
                            or b64_size(rec["data"], f"{what} {rec['id']}", fail) > rec["size"]:
                        fail(f"{what} {rec['id']}: bad size or data")
                    # (its size, as dump counts it: the segment restore makes, whatever the data fills)
                    total += rec["size"]
                elif kind == "sem":
                    if type(rec["vals"]) is not list or not 1 <= len(rec["vals"]) <= 32000 or \
                            not all(int_in(v, 0, 32767) for v in rec["vals"]):
                        fail(f"{what} {rec['id']}: bad semaphore values")
                    sems += len(rec["vals"])
                    if sems > MAX_SEMS:
                        fail(f"sysvipc: more than {MAX_SEMS} semaphores in all")
                else:
                    if type(rec["msgs"]) is not list:
                        fail(f"{what} {rec['id']}: bad messages")
                    for m in rec["msgs"]:
                        if type(m) is not list or len(m) != 2 or not int_in(m[0], 1, (1 << 63) - 1) or type(m[1]) is not str:
                            fail(f"{what} {rec['id']}: a message is [mtype >= 1, base64 text]")
                        total += b64_size(m[1], f"{what} {rec['id']}", fail)
                if total > MAX_BYTES:
                    fail(bound)
    if total > MAX_BYTES:   # (POSIX queues alone)
        fail(bound)
