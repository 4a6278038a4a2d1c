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


def _searchable(gate, d: int) -> bool:
    return userns.may_search(gate[1], d, lambda st: userns.maps_file("top", {"top": gate[0]}, st))


def reachable(gate, root: int, rel: str, flags: int) -> bool:
    """Whether restore would open `rel` (beneath the mount root at fd `root`) with `flags` for a
    process of gate `gate` (Gates.of's): as its user, else as its namespace's root on a file of
    mapped ids reached through directories its user may search or of mapped ids, no symlink on the
    way."""
    want = os.O_PATH if flags & os.O_PATH else _ACCESS.get(flags & os.O_ACCMODE, os.O_RDONLY)
    want |= os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        with kernel.as_user_for_a_while(*gate[1]):
            os.close(kernel.openat2(root, rel or ".", want, _WALK))
        return True
    except PermissionError:
        pass
    parts = [x for x in rel.split("/") if x]
    fds: list[int] = []
    try:
        for k in range(len(parts) + 1):
            fds.append(kernel.openat2(root, "/".join(parts[:k]) or ".", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                                      _WALK))
            if k < len(parts) and not stat.S_ISDIR(os.fstat(fds[-1]).st_mode):
                return False
        if stat.S_ISLNK(os.fstat(fds[-1]).st_mode) or not userns.maps_file("top", {"top": gate[0]},
                                                                           os.fstat(fds[-1])):
            return False
        return all(_searchable(gate, d) for d in fds[:-1])
    finally:
        for fd in fds:
            os.close(fd)


def check_fd(gates: Gates, pid: int, n: str, target: str, flags: int, mnt_id: int | None, host_mnts: set,
             mounts) -> None:
    """Refuse fd `n` of `pid` (a file `target` with `flags` on mount `mnt_id` of its namespace's
    `mounts`) when it is a host's file (`host_mnts`) a rootless tree holds and restore would not
    open for it (FdError EACCES, one line). Passed over when the look cannot tell (the mount
    covered, the file gone): dump tells once stopped, restore decides."""
    if mnt_id is None or mnt_id not in host_mnts or not target.startswith("/"):
        return
    try:
        gate = gates.of(pid)
    except OSError:
        return   # (gone meanwhile: dump tells, once the tree is stopped)
    if gate is None:
        return
    m = next((m for m in mounts if m.mnt_id == mnt_id), None)
    if m is None or not (target == m.mountpoint or target.startswith(m.mountpoint.rstrip("/") + "/")):
        return
    rel = target[len(m.mountpoint.rstrip("/")):].lstrip("/")
    try:
        root = os.open(f"/proc/{pid}/root{m.mountpoint}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if kernel.statx_mnt_id("", root, kernel.AT_EMPTY_PATH) != mnt_id:
            return
        ok = reachable(gate, root, rel, flags)
    except OSError:
        return
    finally:
        os.close(root)
    if not ok:
        raise FdError(errno.EACCES, f"process {pid} fd {n}: {target} is a file of the host's that its rootless "
                                    f"tree's user (uid {gate[1][0]}) could not open (root opened it): restore would "
                                    "refuse it; declare it --external file[PATH]:KEY, or have the tree open it as its user")


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
