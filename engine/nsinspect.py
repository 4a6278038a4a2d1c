"""Reading a dumped mount namespace from inside: a forked helper enters it (setns), stands at its
root mount (chroot) and reads mountinfo and each member process's root, cwd, fds and mappings
(paths as the namespace sees them, mount ids from fdinfo/statx). dump.py runs it once per
mount namespace of the stopped tree (engine.forkrun).
"""

from __future__ import annotations

import errno
import os
import stat

from engine import fds as fdkinds, forkrun, fs, kernel, mappings, mountinfo
from engine.dumperror import DumpError



def parse_fdinfo(text: str) -> dict:
    """The fields of a /proc/PID/fdinfo/N text dump and its pre-stop check use: pos, flags, mnt_id, locks."""
    out: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "pos":
            out["pos"] = int(value)
        elif key == "flags":
            out["flags"] = int(value, 8)
        elif key == "mnt_id":
            out["mnt_id"] = int(value)
        elif key == "lock":   # (engine/filelocks.py)
            out.setdefault("locks", []).append(value)
    return out


def _loc(hostproc: int, link: str, pid: int, what: str) -> dict:
    path = os.readlink(link, dir_fd=hostproc)
    mnt = kernel.statx_mnt_id(link, dfd=hostproc)
    return {"abs": path, "mnt": mnt}


def enter_root(ns_fd: int, pids: list[int], hostproc: int) -> None:
    """setns into the mount namespace and chroot to its root mount.

    setns puts us on whatever is mounted on top of the namespace's "/" (the
    chroot problem of an overmounted root), and ".." cannot step below an
    overmount. So take the roots the member processes have and keep the one
    that sees the most mounts: a process's root is the namespace root unless
    it chrooted, and a chroot sees a subset.
    """
    kernel.setns(ns_fd, kernel.CLONE_NEWNS)
    roots = []
    seen = set()
    for pid in pids:
        fd = os.open(f"{pid}/root", os.O_PATH | os.O_DIRECTORY, dir_fd=hostproc)
        key = (kernel.statx_mnt_id("", fd, kernel.AT_EMPTY_PATH), os.fstat(fd).st_ino)
        if key in seen:
            os.close(fd)
            continue
        seen.add(key)
        roots.append(fd)
    best = roots[0]
    if len(roots) > 1:   # one root (no process chrooted): nothing to compare, no counting child
        counts = [forkrun.run(_count_mounts_from, fd, hostproc) for fd in roots]
        best = roots[counts.index(max(counts))]
    for fd in roots:
        if fd != best:
            os.close(fd)
    os.fchdir(best)
    os.chroot(".")
    os.close(best)


def _count_mounts_from(root_fd: int, hostproc: int) -> int:
    os.fchdir(root_fd)
    os.chroot(".")
    with os.fdopen(os.open("thread-self/mountinfo", os.O_RDONLY, dir_fd=hostproc)) as f:
        return sum(1 for _ in f)


def inspect_ns(ns_fd: int, pids: list[int], by_statmount: bool) -> dict:
    """In a forked child: enter the namespace, read mountinfo and each process's root, cwd, fds
    (and the mounts' unique ids when `by_statmount`: engine.strategy's ids axis)."""
    hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    enter_root(ns_fd, pids, hostproc)
    with os.fdopen(os.open("thread-self/mountinfo", os.O_RDONLY, dir_fd=hostproc)) as f:
        text = f.read()
    # The block device a mount lives on, where mountinfo's device number is not it (its type says).
    source_rdev = {}
    parsed = mountinfo.parse(text)
    for m in parsed:
        h = fs.lookup(m.fstype)
        if h is not None and h.device and (rdev := h.device_of(m)) is not None:
            source_rdev[m.mnt_id] = rdev
    # Whether a bind's root is a directory (so restore may make it while files are still being
    # extracted): the type of its mount point, read where the path leads to that very mount.
    dirs = {}
    for m in parsed:
        if m.root != "/" and (h := fs.lookup(m.fstype)) is not None and h.content:
            try:
                mid, mode = kernel.statx_mnt_id_mode(m.mountpoint, flags=kernel.AT_SYMLINK_NOFOLLOW)
            except OSError:
                continue
            if mid == m.mnt_id:
                dirs[m.mnt_id] = stat.S_ISDIR(mode)
    # 64-bit unique ids (creation order) where the strategy reads them (ids=statmount, 6.8+).
    # Only the ids: the records come from mountinfo, which parses in half the time full statmount
    # records take here (benchmarks/HISTORY.md, "statmount or mountinfo").
    unique = kernel.unique_ids() if by_statmount else {}
    procs = {}
    for pid in pids:
        try:
            root = _loc(hostproc, f"{pid}/root", pid, "root")
            cwd = _loc(hostproc, f"{pid}/cwd", pid, "cwd")
            fds = []
            dfd = os.open(f"{pid}/fd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=hostproc)
            try:
                names = os.listdir(dfd)
            finally:
                os.close(dfd)
            for name in names:
                n = int(name)
                link = f"{pid}/fd/{n}"
                try:
                    target = os.readlink(link, dir_fd=hostproc)
                    with os.fdopen(os.open(f"{pid}/fdinfo/{n}", os.O_RDONLY, dir_fd=hostproc)) as f:
                        info = parse_fdinfo(f.read())
                    st = os.stat(link, dir_fd=hostproc)
                except FileNotFoundError:
                    continue  # closed while we looked (the tree is stopped, so: a race with exit)
                fds.append({"fd": n, "target": target, "mode": st.st_mode, **info})
                if (seen := fdkinds.inspect_in_ns(target, st.st_mode, hostproc, pid, n, parsed)) is not None:
                    fds[-1]["in_ns"] = seen   # what a kind reads from inside the namespace (inotify watches)
        except FileNotFoundError:
            raise DumpError(errno.ESRCH, f"process {pid} exited during dump") from None
        procs[pid] = {"root": root, "cwd": cwd, "fds": fds, **mappings.read(hostproc, pid)}
    _same_path_outside(procs, parsed, hostproc)
    return {"mountinfo": text, "procs": procs, "unique": unique, "source_rdev": source_rdev, "dirs": dirs}


def _same_path_outside(procs: dict, mounts: list, hostproc: int) -> None:
    """In the namespace (chrooted at its root): each fd on a mount this namespace lacks that its path
    here reaches too (same superblock, same inode) gets `visible_mnt`, the mount the path leads to
    (used only when no dumped namespace has the fd's mount).

    A process that opened a file before it unshared (/dev/null of every systemd service and
    bwrap sandbox, a runtime's log) holds it through a mount of the parent namespace, which is
    not dumped; its namespace copy has the file at the same path on a mount of the same
    superblock. Lazily unmounted mounts have no such path (see _plan_detached).
    """
    ids = {m.mnt_id for m in mounts}
    devs = {m.mnt_id: m.dev for m in mounts}
    for pid, data in procs.items():
        for f in data["fds"]:
            if f.get("mnt_id") in ids or not f["target"].startswith("/") or f["target"].endswith(kernel.DELETED):
                continue
            mid = _reaches(hostproc, f"{pid}/fd/{f['fd']}", f["target"], devs, stat.S_ISLNK(f["mode"]))
            if mid is not None:
                f["visible_mnt"] = mid
        # A mapped file likewise (a program that unshared without exec maps its libraries through
        # the parent's mounts): the mount its path reaches here and the real path it has there, used
        # only when the mapping's own mount is in no dumped namespace (placement._place_maps). (The
        # kernel names a file of a mount namespace gone since relative to its mount's root: /bin/unshare
        # of a /usr mount, reached here through a symlink.)
        maps = []
        for path, mnt, link, *_ in data["maps"]:
            visible = None
            if mnt not in ids and not path.endswith(kernel.DELETED):
                visible = _visible(hostproc, f"{pid}/{link}", path, devs)
            maps.append((path, mnt, link, visible))
        data["maps"] = maps
        # Its executable likewise (`unshare -m unshare -m ...`: the waiting unshare runs a file of a
        # mount namespace gone since), again only for placement to use when no dumped namespace has
        # its mount: a mount of another dumped namespace is the executable's own (CRIU's mntns_open).
        if data.get("exe") and data["exe"][1] not in ids and not data["exe"][0].endswith(kernel.DELETED):
            data["exe_visible"] = _visible(hostproc, f"{pid}/exe", data["exe"][0], devs)


def _visible(hostproc: int, link: str, path: str, devs: dict) -> tuple[int, str] | None:
    """(mount id, real path) of the file /proc/`link` is when `path` reaches that same file here on a
    mount of this namespace (`devs`: mount id -> device), else None."""
    mid = _reaches(hostproc, link, path, devs)
    return None if mid is None else (mid, os.path.realpath(path))


def _reaches(hostproc: int, link: str, path: str, devs: dict, nofollow: bool = False) -> int | None:
    """The mount of this namespace (`devs`: mount id -> device) on which `path` (itself, a symlink,
    with `nofollow`) is the file /proc/`link` is (same device and inode); None when it is not."""
    try:
        want, here = os.stat(link, dir_fd=hostproc), os.stat(path, follow_symlinks=not nofollow)
        mid = kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW if nofollow else 0)
    except OSError:
        return None
    if (here.st_dev, here.st_ino) != (want.st_dev, want.st_ino) or \
            devs.get(mid) != f"{os.major(here.st_dev)}:{os.minor(here.st_dev)}":
        return None
    return mid
