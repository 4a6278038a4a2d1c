"""Dump's look, before the stop, at what a rootless tree holds of the host's files.

A rootless tree (its outermost user namespace made by a non-root user) gets the host's files
back at restore only as far as that user could open them (engine/userns.py host_gate, used by
engine/restore.py host_reach): as that user, or as its namespace's root on a file, and through
directories, of ids the namespace maps. A process of such a tree may hold a file root opened and
passed in (an fd root's process opened before it joined or made the namespace); restore would
refuse it, so dump refuses it first ("a dump that succeeds must restore"), with the tree running.
"""

from __future__ import annotations

import errno
import os
import stat

from engine import fs, kernel, userns
from engine.fds import FdError
from engine.image import is_beneath, rel_to

_WALK = kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_XDEV | kernel.RESOLVE_NO_MAGICLINKS
_ACCESS = {os.O_RDONLY: os.O_RDONLY, os.O_WRONLY: os.O_WRONLY, os.O_RDWR: os.O_RDWR}


class Gates:
    """The rootless gate of each process: (maps of its outermost owned user namespace, that user's
    (uid, gid, groups)), or None; learnt once per user namespace."""

    def __init__(self):
        self._by_ns: dict[int, tuple | None] = {}
        self._ids: dict[int, tuple] = {}

    def of(self, pid: int) -> tuple | None:
        """`pid`'s gate, or None when root made every user namespace above it."""
        ino = os.stat(f"/proc/{pid}/ns/user").st_ino
        if ino == userns.own_userns_ino():
            return None
        if ino not in self._by_ns:
            found = userns.outermost_owned(pid)
            if found is None:
                self._by_ns[ino] = None
            else:
                maps, owner = found
                if owner not in self._ids:
                    self._ids[owner] = userns.user_ids(owner)
                self._by_ns[ino] = ({"uid_map": maps.uid_map, "gid_map": maps.gid_map}, self._ids[owner])
        return self._by_ns[ino]


def _maps(gate):
    return lambda st: userns.maps_file("top", {"top": gate[0]}, st)


def reachable(gate, root: int, rel: str, flags: int, fn=None) -> bool:
    """Whether restore would open `rel` (beneath the mount root at fd `root`) with `flags` for a
    process of gate `gate` (Gates.of's): userns.reach's rule, restore's own, on a walk from that
    root with no symlink on the way. `fn(fd)` (given an O_PATH fd on the file, run as the user
    first): what restore does there instead of an open (a socket's connect: may it write it)."""
    # (openat2 takes no flag but these with O_PATH: EINVAL, which once passed every O_PATH fd over)
    want = (os.O_PATH | os.O_CLOEXEC if flags & os.O_PATH
            else _ACCESS.get(flags & os.O_ACCMODE, os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)

    def at():
        return kernel.openat2(root, rel or ".", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, _WALK)

    def opened():
        if fn is not None:
            fd = at()
            try:
                return fn(fd)
            finally:
                os.close(fd)
        os.close(kernel.openat2(root, rel or ".", want, _WALK))

    def dirs():
        return userns.dirs_to(lambda sub, f: kernel.openat2(root, sub or ".", f, _WALK), rel)
    try:
        userns.reach(gate[1], _maps(gate), opened, at, dirs)
        return True
    except PermissionError:
        return False


def may_connect(fd: int) -> None:
    """reachable's `fn` for a socket file (O_PATH fd `fd`): restore connects through its /proc
    magic link, which asks write permission on the socket file alone (PermissionError without)."""
    if not os.access(f"/proc/self/fd/{fd}", os.W_OK, effective_ids=True):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def unreached(gates: Gates, pid: int, target: str, flags: int, mnt_id: int | None, host_mnts: set, mounts,
              fn=None) -> tuple | None:
    """The gate of `pid` when `target` (a file with `flags` on mount `mnt_id` of its namespace's
    `mounts`) is a host's file (`host_mnts`) its rootless tree holds and restore would not open
    for it (reachable), else None. None too when the look cannot tell (the mount covered, the file
    gone): dump tells once stopped, restore decides."""
    if mnt_id is None or mnt_id not in host_mnts or not target.startswith("/") or target.endswith(kernel.DELETED):
        return None
    try:
        gate = gates.of(pid)
    except OSError:
        return None   # (gone meanwhile: dump tells, once the tree is stopped)
    if gate is None:
        return None
    m = next((m for m in mounts if m.mnt_id == mnt_id), None)
    if m is None or not (target == m.mountpoint or target.startswith(m.mountpoint.rstrip("/") + "/")):
        return None
    rel = target[len(m.mountpoint.rstrip("/")):].lstrip("/")
    try:
        root = os.open(f"/proc/{pid}/root{m.mountpoint}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if kernel.statx_mnt_id("", root, kernel.AT_EMPTY_PATH) != mnt_id:
            return None
        ok = reachable(gate, root, rel, flags, fn)
    except OSError:
        return None
    finally:
        os.close(root)
    return None if ok else gate


def check_fd(gates: Gates, pid: int, n: str, target: str, flags: int, mnt_id: int | None, host_mnts: set,
             mounts) -> None:
    """Refuse fd `n` of `pid` (a file `target` with `flags` on mount `mnt_id` of its namespace's
    `mounts`) when it is a host's file (`host_mnts`) a rootless tree holds and restore would not
    open for it (FdError EACCES, one line; `unreached`)."""
    gate = unreached(gates, pid, target, flags, mnt_id, host_mnts, mounts)
    if gate is not None:
        raise FdError(errno.EACCES, f"process {pid} fd {n}: {target} is a file of the host's that its rootless "
                                    f"tree's user (uid {gate[1][0]}) could not open (root opened it): restore would "
                                    "refuse it; declare it --external file[PATH]:KEY, or have the tree open it as its user")


def check_connect(gates: Gates, pid: int, where: str, name: str, vfs, host_mnts: set, mounts) -> None:
    """Refuse (FdError EACCES, one line) socket `where` of `pid` connected to path `name`, the
    socket file (`vfs`: sock_diag's (ino, dev) of its socket) on the host's files, when its rootless
    tree's user could not reach it (its walk) or connect to it (write it): restore opens and
    connects it by userns.reach's rule (engine/fds/unix.py _connect_to) and would refuse it. Passed
    over when the name leads elsewhere now (restore decides)."""
    if vfs is None or not name.startswith("/"):
        return
    from engine.fds import unix_locate
    mnt_id = unix_locate.socket_at(f"/proc/{pid}/root{name}", vfs)
    if mnt_id is None:
        return   # (gone meanwhile, elsewhere, or its directory out of our reach: restore decides)
    gate = (unreached(gates, pid, name, os.O_PATH, mnt_id, host_mnts, mounts)
            or unreached(gates, pid, name, os.O_WRONLY, mnt_id, host_mnts, mounts, may_connect))
    if gate is not None:
        raise FdError(errno.EACCES, f"{where}: connected to {name}, a socket file of the host's its rootless tree's "
                                    f"user (uid {gate[1][0]}) could not connect to (root connected it): restore would "
                                    "refuse it; have the tree connect as its user, or make the socket writable for it")


def check_process(gates: Gates, pid: int, host_mnts: set, mounts) -> None:
    """Refuse (FdError EACCES, one line) the root, cwd, executable or a mapped file of `pid` when
    it is a host's file its rootless tree's user could not reach (`unreached`: restore opens each
    by the same rule, and would refuse it)."""
    if not host_mnts:
        return
    try:
        if gates.of(pid) is None:
            return
    except OSError:
        return   # (gone meanwhile)
    for what, link, flags in _process_files(pid):
        try:
            target, mnt_id = os.readlink(link), kernel.statx_mnt_id(link)
        except OSError:
            continue   # (gone or unmapped meanwhile)
        gate = unreached(gates, pid, target, flags, mnt_id, host_mnts, mounts)
        if gate is not None:
            raise FdError(errno.EACCES, f"process {pid} {what} ({target}) is on the host's files, where its "
                                        f"rootless tree's user (uid {gate[1][0]}) could not reach it: restore would "
                                        "refuse it; make it (and the directories above it) reachable for that user, "
                                        "or start the process from a place of the tree's own")


def _process_files(pid: int):
    """(what, magic link, flags restore opens it with) of `pid`'s root, cwd, executable and each
    file it maps (once each)."""
    yield "root", f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY
    yield "cwd", f"/proc/{pid}/cwd", os.O_PATH | os.O_DIRECTORY
    yield "executable", f"/proc/{pid}/exe", os.O_RDONLY
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return   # (gone meanwhile)
    seen: set[str] = set()
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/") or parts[5] in seen:
            continue
        seen.add(parts[5])
        lo, _, hi = parts[0].partition("-")
        yield "mapping", f"/proc/{pid}/map_files/{int(lo, 16):x}-{int(hi, 16):x}", os.O_RDONLY


def check_mount_roots(gates: Gates, view) -> None:
    """Refuse (fs.FsError EACCES, one line) a mount of a rootless tree made from the host's files
    beneath an external mount's root (a bind of a subdirectory of it, prestop's `view`) where a
    directory on the way is one the tree's user may not search: restore would refuse it (it skips
    those directories' search checks: restore.py _check_host_root). Passed over when the look cannot
    tell (the external mount covered, a process gone): restore decides."""
    ext = [(name, e) for name, ns in view.mntns_doc.items() for e in ns["mounts"] if e["external"]]
    for name, ns in view.mntns_doc.items():
        mine: dict[int, tuple] = {}
        for pid in view.ns_pids.get(name) or ():
            try:
                gate = gates.of(pid)
            except OSError:
                continue   # (gone meanwhile)
            if gate is not None:
                mine[id(gate)] = gate
        if not mine or not ext:
            continue
        for e in ns["mounts"]:
            if e["external"] or e.get("ghost") or not view.superblocks[e["sb"]]["external"]:
                continue
            best = max((x for x in ext if x[1]["sb"] == e["sb"] and is_beneath(e["root"], x[1]["root"])),
                       key=lambda x: len(x[1]["root"]), default=None)
            rel = best and rel_to(e["root"], best[1]["root"]).strip("/")
            gate = rel and next((g for g in mine.values() if not _walk_open(g, view, *best, rel)), None)
            if gate:
                raise fs.FsError(errno.EACCES, f"mount {e['id']} ({e['mountpoint']}): its root {e['root']} lies "
                                               "beneath a directory of the host's that its rootless tree's user "
                                               f"(uid {gate[1][0]}) may not search: restore would refuse it; "
                                               f"declare it --external mnt[{e['mountpoint']}]:KEY")


def _walk_open(gate, view, ns_name: str, ext: dict, rel: str) -> bool:
    """Whether the user of `gate` may search each directory above `rel` beneath the root of external
    mount `ext` (of namespace `ns_name`), reached from a process of that namespace; True when it
    cannot be reached to tell."""
    for pid in view.ns_pids.get(ns_name) or ():
        try:
            root = os.open(f"/proc/{pid}/root{ext['mountpoint']}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if kernel.statx_mnt_id("", root, kernel.AT_EMPTY_PATH) != ext["id"]:
                continue
            return userns.may_walk(gate[1], root, rel, lambda st: userns.maps_file("top", {"top": gate[0]}, st),
                                   _WALK)
        except OSError:
            return False   # (its mount id not to be read: no walk to tell of)
        finally:
            os.close(root)
    return True
