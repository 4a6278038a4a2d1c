"""inotify: each watch (wd, mask) on the same inode, reached through a mount of the restored tree.

fdinfo names a watched inode by device and file handle. Inside the process's
mount namespace (the in_ns hook) the handle is opened through a visible mount
of that device, giving the inode's path and mount there; restore opens that
path on the restored mount and adds the watch through /proc/self/fd/N, in wd
order. A filesystem whose handles do not open again (overlayfs without
nfs_export), or a watch fdinfo lists without a handle (the kernel could not encode one), is
searched for by the inode number near the mount's root instead; a watch line of another form
refuses the fd (never a watch silently left out). The kernel hands out wds cyclically, so a gap (a watch removed) is
recreated with throwaway watches on memfds, removed again.

A watch on a file unlinked since (CRIU's inotify00) is on the ghost of the
same file that an fd of the tree holds open (engine/ghosts.py): restore adds it
through that ghost before the ghost is unlinked again.

A watched inode no mount of the process's namespace reaches is looked for
through the visible mounts of the tree's other namespaces (a runtime's monitor
watching a file of the container's cgroup).

Events waiting to be read are refused (before the stop; restore cannot make them happen again in
their order: making them would reach every other watcher of those files too). The dump's own reads
of the tree's files (its archive of a tmpfs opens and reads them) queue events on watches of them:
those are read and dropped before the tree resumes (the queue was empty at the stop); the
restore's own (a gap's IN_IGNORED, files it opens for other fds) once every fd exists.

Not done: watches
on a filesystem reachable only beneath an overmount, unless the watching process holds
something on that mount (`_by_held`: tail -f holds the file it watches), or on a detached mount
(refused at dump, and before the tree is stopped: `_precheck`). fanotify marks: engine/fds/fanotify.py.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from engine import rx
import stat
import struct
import termios
import time

from engine.imageformat import GHOST_ID, LIST, F
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.fds import sys as fsys
from engine.kernel import undeleted

# One fdinfo line a watch; the handle is left out when the kernel cannot encode one for the inode.
_WATCH = rx.compile(r"^inotify wd:([0-9a-f]+) ino:([0-9a-f]+) sdev:([0-9a-f]+) mask:([0-9a-f]+) [^\n]*?"
                    r"(?:fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) f_handle:([0-9a-f]+))?$", rx.M)
MAX_GAP = 4096
UNREAD_LOOKS = 20   # events waiting before the stop: looked at again this many times, 50 ms apart
DRAIN_ORDER = (1 << 30) + 1   # (a late step after unix_ghost.CLEANUP_ORDER's: ghosts unlinked again)
IN_DONT_FOLLOW = 0x02000000
_libc = ctypes.CDLL(None, use_errno=True)


def _in_ns(hostproc: int, pid: int, fd: int, mounts) -> dict:
    """In the namespace: {"watches": [{wd, mask, abs, mnt}] or [{wd, error}] per watch, "queued":
    the bytes of events waiting to be read (before the dump read any file of the tree)}."""
    with open(os.open(f"{pid}/fdinfo/{fd}", os.O_RDONLY, dir_fd=hostproc)) as f:
        text = f.read()
    return {"watches": _watches(hostproc, pid, fd, mounts, text), "queued": _queued_of(pid, fd)}


def _queued_of(pid: int, fd: int) -> int:
    """The bytes of events waiting on fd `fd` of process `pid` (FIONREAD on a copy reads none)."""
    pidfd = os.pidfd_open(pid)
    try:
        copy = fsys.pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)
    try:
        return queued(copy)
    finally:
        os.close(copy)


def queued(fd: int) -> int:
    """The bytes of events waiting on our inotify fd `fd` (FIONREAD reads none)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _watches(hostproc: int, pid: int, fd: int, mounts, text: str) -> list[dict]:
    """[{wd, mask, abs, mnt}] or [{wd, error}] per watch line of fdinfo `text`."""
    out = []
    for m in _WATCH.finditer(text):
        wd, mask, sdev, ino = int(m[1], 16), int(m[4], 16), int(m[3], 16), int(m[2], 16)
        if m[5] is None:   # no handle: the inode by its number alone
            got = _by_ino(mounts, f"{sdev >> 20}:{sdev & 0xFFFFF}", os.makedev(sdev >> 20, sdev & 0xFFFFF), ino)
            find = None
        else:
            handle = bytes.fromhex(m[7])[:int(m[5], 16)]
            got = locate_handle(hostproc, mounts, sdev, int(m[6], 16), handle, ino=ino) \
                or _by_held(hostproc, pid, mounts, sdev, int(m[6], 16), handle)
            find = (sdev, int(m[6], 16), m[7][:2 * int(m[5], 16)], ino)
        out.append({"wd": wd, "mask": mask, **got} if got else
                   {"wd": wd, "mask": mask, "error": f"watch {wd} is on device {sdev >> 20}:{sdev & 0xFFFFF}, which "
                                                     "no visible mount reaches (a mount covered by another or detached, "
                                                     "the watcher holding nothing on it)", "find": find})
    if len(out) != text.count("inotify wd:"):
        # a line this parser does not know: refused rather than a watch silently left out
        raise FdError(errno.EOPNOTSUPP, f"process {pid} fd {fd}: an inotify watch line of an unknown form")
    return out


def _in_other_ns(pid: int, mounts, sdev: int, htype: int, handle: str, ino: int) -> dict | None:
    """In a forked child: locate_handle in the mount namespace of `pid` (its mounts `mounts`),
    standing at its root as the in_ns hook stands in the fd's own."""
    from engine import nsinspect
    hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    ns = os.open(f"{pid}/ns/mnt", os.O_RDONLY, dir_fd=hostproc)
    nsinspect.enter_root(ns, [pid], hostproc)
    return locate_handle(hostproc, mounts, sdev, htype, bytes.fromhex(handle), ino=ino)


def _elsewhere(d, find) -> dict | None:
    """{abs, mnt} of a watched inode no mount of the process's namespace reaches, found through a
    visible mount of the tree's other namespaces (podman's conmon watches the container's cgroup
    memory.events, which after the runtime's /sys/fs/cgroup is gone only the container's own
    cgroup2 mount shows); None when none reaches it either."""
    from engine import forkrun
    sdev, htype, handle, ino = find
    dev = f"{sdev >> 20}:{sdev & 0xFFFFF}"
    for pid, mounts in d.elsewhere:
        if any(m.dev == dev for m in mounts):
            got = forkrun.run(_in_other_ns, pid, mounts, sdev, htype, handle, ino)
            if got is not None:
                return got
    return None


def locate_handle(hostproc: int, mounts, sdev: int, htype: int, handle: bytes,
                  ino: int | None = None) -> dict | None:
    """In the namespace: {abs, mnt} of the inode with file handle (htype, handle) on the kernel
    device `sdev` (fdinfo's), opened through a visible mount of that device; None if none reaches it.

    A filesystem whose handles cannot be opened again (overlayfs without nfs_export: fdinfo shows
    a handle, open_by_handle_at says ESTALE) is searched for inode `ino` instead (see _by_ino)."""
    from engine import kernel
    dev = f"{sdev >> 20}:{sdev & 0xFFFFF}"
    got = _by_handle(hostproc, mounts, dev, htype, handle)
    if got is None and ino is not None:
        got = _by_ino(mounts, dev, os.makedev(sdev >> 20, sdev & 0xFFFFF), ino)
    return got


# At most this many directories are read per mount when looking for an inode by its number: the
# watched inodes are configuration directories near a mount's root, and a big tree (a guest's /usr
# over 9p) must not make dump slow.
INO_SCAN_DIRS = 4096


def _by_ino(mounts, dev: str, rdev: int, ino: int) -> dict | None:
    """In the namespace: {abs, mnt} of inode `ino` of device `dev`, found by reading the directories
    of a visible mount of that device breadth first (nearest the root first, INO_SCAN_DIRS at
    most, never into another mount); None if not found. CRIU's irmap does the same for such
    filesystems (it searches a few well-known directories)."""
    from engine import kernel
    for mnt in sorted((x for x in mounts if x.dev == dev), key=lambda x: (len(x.root), x.mnt_id)):
        try:
            if kernel.statx_mnt_id(mnt.mountpoint, flags=kernel.AT_SYMLINK_NOFOLLOW) != mnt.mnt_id:
                continue   # covered: its path leads elsewhere
            st = os.stat(mnt.mountpoint, follow_symlinks=False)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (rdev, ino):
            return {"abs": mnt.mountpoint, "mnt": mnt.mnt_id}
        queue, read = [mnt.mountpoint], 0
        while queue and read < INO_SCAN_DIRS:
            here, queue = queue[0], queue[1:]
            read += 1
            try:
                entries = list(os.scandir(here))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        est = e.stat(follow_symlinks=False)
                        if est.st_dev != rdev:
                            continue   # another filesystem: not this mount's
                        if kernel.statx_mnt_id(e.path, flags=kernel.AT_SYMLINK_NOFOLLOW) != mnt.mnt_id:
                            continue   # a mount on it
                        queue.append(e.path)
                    elif e.inode() != ino:
                        continue
                    else:
                        est = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (est.st_dev, est.st_ino) == (rdev, ino):
                    return {"abs": e.path, "mnt": mnt.mnt_id}
    return None


def _by_handle(hostproc: int, mounts, dev: str, htype: int, handle: bytes) -> dict | None:
    """In the namespace: {abs, mnt} of the inode with the handle, opened through a visible mount of `dev`."""
    from engine import kernel
    for mnt in sorted((x for x in mounts if x.dev == dev), key=lambda x: (len(x.root), x.mnt_id)):
        try:
            if kernel.statx_mnt_id(mnt.mountpoint, flags=kernel.AT_SYMLINK_NOFOLLOW) != mnt.mnt_id:
                continue   # covered: its path leads elsewhere
            mfd = os.open(mnt.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        got = _through(hostproc, mfd, mnt, htype, handle)
        if got is not None:
            return got
    return None


def _through(hostproc: int, mfd: int, mnt, htype: int, handle: bytes) -> dict | None:
    """{abs, mnt} of the inode with the handle, opened through our fd `mfd` (closed here) on mount
    `mnt`; None when it does not open, or lies outside that mount's root: a handle opens any inode
    of the filesystem through any of its mounts (its path then names something else)."""
    from engine import kernel
    try:
        h = kernel.open_by_handle_at(mfd, htype, handle, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return None
    finally:
        os.close(mfd)
    try:
        path = os.readlink(f"self/fd/{h}", dir_fd=hostproc)
        return {"abs": path, "mnt": mnt.mnt_id} if _within(h, path, mnt) else None
    except OSError:
        return None
    finally:
        os.close(h)


def _by_held(hostproc: int, pid: int, mounts, sdev: int, htype: int, handle: bytes) -> dict | None:
    """In the namespace: {abs, mnt} of the inode with the handle, opened through what process `pid`
    itself holds on device `sdev` (an fd, its cwd or root) on a mount beneath an overmount, which no
    path reaches: `tail -f` watches the file it reads, whose directory was mounted over since.
    None if it holds nothing there."""
    from engine import kernel
    rdev = os.makedev(sdev >> 20, sdev & 0xFFFFF)
    by_id = {m.mnt_id: m for m in mounts}
    try:
        dfd = os.open(f"{pid}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=hostproc)
    except OSError:
        return None
    try:
        held = [f"fd/{n}" for n in os.listdir(dfd)] + ["cwd", "root"]
    finally:
        os.close(dfd)
    for name in held:
        try:
            mfd = _held_open(hostproc, f"{pid}/{name}", rdev, by_id)
            if mfd is None:
                continue
        except OSError:
            continue
        try:
            mnt = by_id[kernel.statx_mnt_id("", mfd, kernel.AT_EMPTY_PATH)]
        except OSError:
            os.close(mfd)
            continue
        got = _through(hostproc, mfd, mnt, htype, handle)
        if got is not None:
            return got
    return None


def _held_open(hostproc: int, link: str, rdev: int, by_id: dict) -> int | None:
    """A readable fd (open_by_handle_at takes no O_PATH one) on what /proc magic link `link` names,
    when that is a directory or regular file of device `rdev` on a mount of `by_id`; else None. Not
    a file someone holds a lease on: our open would break it."""
    from engine import filelocks, kernel
    p = os.open(link, os.O_PATH | os.O_CLOEXEC, dir_fd=hostproc)
    try:
        st = os.fstat(p)
        if st.st_dev != rdev or kernel.statx_mnt_id("", p, kernel.AT_EMPTY_PATH) not in by_id \
                or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            return None
        if stat.S_ISREG(st.st_mode):
            inode = filelocks.inode_key(st.st_dev, st.st_ino)
            with open(os.open("locks", os.O_RDONLY, dir_fd=hostproc)) as f:
                if any(" LEASE " in line and inode in line.split() for line in f):
                    return None
        return os.open(f"self/fd/{p}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=hostproc)
    finally:
        os.close(p)


def _within(h: int, path: str, mnt) -> bool:
    """Is the inode our fd `h` (opened by handle through mount `mnt`, path `path` as readlink shows
    it) within that mount's root? Its path leads back to it; or (beneath an overmount) a
    directory whose ".." the kernel walks (it refuses to step out of a bind's root), or a file
    of a mount of the whole filesystem."""
    from engine import kernel
    from engine.image import is_beneath
    if not path.startswith("/") or not is_beneath(path, mnt.mountpoint):
        return False
    st = os.fstat(h)
    try:
        here = os.stat(path, follow_symlinks=False)
        if (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino) \
                and kernel.statx_mnt_id(path, flags=kernel.AT_SYMLINK_NOFOLLOW) == mnt.mnt_id:
            return True
    except OSError:
        pass
    if stat.S_ISDIR(st.st_mode):
        try:
            os.close(os.open("..", os.O_PATH | os.O_CLOEXEC, dir_fd=h))
            return True
        except OSError:
            return False
    return mnt.root == "/"


def _dump(d) -> dict:
    seen = d.in_ns or {"watches": []}
    if seen.get("queued"):   # (queued between the precheck and the stop)
        raise FdError(errno.EOPNOTSUPP, _unread(d, seen["queued"]))
    steps = d.scratch.get("after_reads")
    if steps is not None and seen.get("queued") == 0:   # (known empty once the tree stopped)
        copy, where = os.dup(d.copy()), d.where
        steps.append((f"{where}: dropping the inotify events of the dump's own reads",
                      lambda: _drop_dump_events(copy, where)))
    watches = []
    for w in _located(d, seen["watches"]):
        abs_path, deleted = undeleted(w["abs"])
        loc = d.place(abs_path, w["mnt"], f"fd {d.fd} inotify watch {w['wd']}")
        if loc.get("detached"):
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: inotify watch {w['wd']} on a detached mount: not supported")
        watch = {"wd": w["wd"], "mask": w["mask"], "mnt": loc["mnt"], "path": loc["path"]}
        if deleted:
            watch["_deleted"] = d.where   # (_finish names the ghost of the fd that holds that file)
        watches.append(watch)
    return {"watches": sorted(watches, key=lambda w: w["wd"])}


def _unread(d, waiting: int) -> str:
    return (f"{d.where}: inotify events wait to be read on it ({waiting} bytes; restore cannot make them "
            "again): not supported; dump again once the program has read them")


# What reading a file or directory makes (open, read, close), as the dump reads the tree's files:
# IN_ACCESS, IN_CLOSE_NOWRITE, IN_OPEN.
READ_EVENTS = (0x1, 0x10, 0x20)
IN_ISDIR = 0x40000000
IN_IGNORED = 0x8000


def _drop_dump_events(copy: int, where: str) -> None:
    """Before the tree resumes: read (and drop) the events queued on our `copy` (closed here) of an
    inotify fd whose queue was empty when the tree stopped: the dump's reads of the tree's files
    made them (archives of its filesystems). An event of another kind was made by someone else
    while the tree was stopped: told, as it is gone with them."""
    try:
        others, gone = 0, []
        for _ in range(64):   # (bounded: a writer outside the tree could keep it busy)
            n = queued(copy)
            if not n:
                break
            data = os.read(copy, n)
            off = 0
            while off + 16 <= len(data):
                wd, mask, _cookie, ln = struct.unpack_from("iIII", data, off)
                if mask == IN_IGNORED:
                    gone.append(wd)   # (an IN_ONESHOT watch a read of the dump fired: removed)
                else:
                    others += (mask & ~IN_ISDIR) not in READ_EVENTS
                off += 16 + ln
        import sys
        if others:
            sys.stderr.write(f"mntcr dump: note: {where}: {others} inotify events someone else made while the "
                             "tree was stopped were dropped with those of the dump's own reads\n")
        if gone:
            sys.stderr.write(f"mntcr dump: note: {where}: inotify watches {', '.join(map(str, gone))} were "
                             "removed from the running tree (IN_ONESHOT, or their file gone) while it was stopped; "
                             "the image has them\n")
    finally:
        os.close(copy)


def _finish(objects: dict, entries: list[dict]) -> None:
    """A watch on a file unlinked since: on the ghost of an fd of the tree on that file (same mount
    and path), or of a directory removed while a process's cwd or root (`entries` has those too:
    kind held_dir, FdTable.finish), which restore recreates; refused when nothing holds it
    (nothing to watch at restore)."""
    held = {(e["mnt"], e["path"]): e["ghost"] for e in entries if e.get("ghost") and "mnt" in e and "path" in e}
    for e in entries:
        for w in e.get("watches") or () if e.get("kind") == "inotify" else ():
            where = w.pop("_deleted", None)
            if where is None:
                continue
            gid = held.get((w["mnt"], w["path"]))
            if gid is None:
                raise FdError(errno.EOPNOTSUPP, f"{where}: inotify watch {w['wd']} on {w['path']}, a deleted file "
                                                "no fd of the tree holds open: not supported")
            w["ghost"] = gid


def _located(d, seen: list[dict]) -> list[dict]:
    """The watches the in_ns hook saw (`seen`), each {wd, mask, abs, mnt}: one no mount of the
    process's namespace reaches looked for in the tree's other namespaces, and refused when none
    reaches it either."""
    out = []
    for w in seen:
        if "error" in w:
            got = _elsewhere(d, w["find"]) if w.get("find") else None
            if got is None:
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: inotify {w['error']}: not supported")
            w = {"wd": w["wd"], "mask": w["mask"], **got}
        out.append(w)
    return out


def _precheck(d) -> None:
    """Before the tree is stopped: `_located`'s refusal, the watches seen as the in_ns hook sees them
    in a child that entered the process's namespace (only for an fd with watches). The process
    runs: a watch it changed while we looked is refused only when a second look finds it too."""
    from engine import forkrun
    waiting = queued(d.copy())
    for _ in range(UNREAD_LOOKS):   # (the process runs: one that reads its events may not have had a CPU yet)
        if not waiting:
            break
        time.sleep(0.05)
        waiting = queued(d.copy())
    if waiting:
        raise FdError(errno.EOPNOTSUPP, _unread(d, waiting))
    with open(f"/proc/{d.pid}/fdinfo/{d.fd}") as f:
        if "inotify wd:" not in f.read():
            return
    members = (d.scratch.get("members") or {}).get(d.pid) or [d.pid]
    try:
        _located(d, forkrun.run(_in_own_ns, d.pid, members, d.fd, d.mounts)["watches"])
    except FdError:
        _located(d, forkrun.run(_in_own_ns, d.pid, members, d.fd, d.mounts)["watches"])


def _in_own_ns(pid: int, members: list[int], fd: int, mounts) -> dict:
    """In a forked child: the in_ns hook for fd `fd` of `pid`, standing at the root of its mount
    namespace as dump's helper stands (`members`: the tree's processes in it)."""
    from engine import nsinspect
    hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    ns = os.open(f"{pid}/ns/mnt", os.O_RDONLY, dir_fd=hostproc)
    nsinspect.enter_root(ns, members, hostproc)
    return _in_ns(hostproc, pid, fd, mounts)


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail, check_abs_path
    ws = entry.get("watches")
    if not isinstance(ws, list):
        _fail(f"{what}: inotify watches must be a list")
    last = 0
    for w in ws:
        if not isinstance(w, dict) or not all(isinstance(w.get(k), int) for k in ("wd", "mask", "mnt")) \
                or not last < w["wd"] <= last + MAX_GAP:
            _fail(f"{what}: bad inotify watch")
        last = w["wd"]
        check_abs_path(w.get("path"), f"{what} watch {w['wd']}")
        if "ghost" in w and (not isinstance(w["ghost"], str) or not GHOST_ID.match(w["ghost"])):
            _fail(f"{what}: inotify watch {w['wd']}: bad ghost id")


def _add(ifd: int, proc: int, fd: int, mask: int, name: str | None = None) -> int:
    """inotify_add_watch on what our fd `fd` is (or on entry `name` of that directory)."""
    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        os.fchdir(proc)
        path = f"self/fd/{fd}" + (f"/{name}" if name else "")
        wd = _libc.inotify_add_watch(ifd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_add_watch: {os.strerror(e)}")
        return wd
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def _open(r: RestoreFd) -> int:
    e = r.entry
    ifd = _libc.inotify_init1(os.O_CLOEXEC | (e["flags"] & os.O_NONBLOCK))
    if ifd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    try:
        nxt = 1   # a fresh inotify instance hands out 1, 2, ... (cyclically: a removed wd is not reused)
        for w in e["watches"]:
            while nxt < w["wd"]:
                probe = os.memfd_create("mntcr-wd", os.MFD_CLOEXEC)
                try:
                    _libc.inotify_rm_watch(ifd, _add(ifd, r.proc, probe, 0x2))   # IN_MODIFY, then gone
                finally:
                    os.close(probe)
                nxt += 1
            # (O_NOFOLLOW for a path beneath the mount's root only: its root is reached through a
            # /proc magic link, which O_NOFOLLOW would open itself)
            named = bool(w["path"].strip("/"))
            if "ghost" in w:
                fd = _ghost(r, w)
            else:
                fd = r.open_at(w["mnt"], w["path"], os.O_PATH | (os.O_NOFOLLOW if named else 0))
            try:
                if named and stat.S_ISLNK(os.fstat(fd).st_mode):
                    # A watch on a symlink itself (systemd's on /etc/localtime; fdinfo shows no
                    # IN_DONT_FOLLOW bit): added by its name in its directory, not followed.
                    parent, name = w["path"].rstrip("/").rsplit("/", 1)
                    os.close(fd)
                    fd = r.open_at(w["mnt"], parent or "/", os.O_PATH | os.O_DIRECTORY)
                    wd = _add(ifd, r.proc, fd, w["mask"] | IN_DONT_FOLLOW, name)
                else:
                    wd = _add(ifd, r.proc, fd, w["mask"])
            finally:
                os.close(fd)
            if wd != w["wd"]:
                raise OSError(errno.EEXIST, f"inotify watch came back as wd {wd}, not {w['wd']}")
            nxt = wd + 1
        # The dumped queue was empty (refused otherwise): what waits once every fd exists and every
        # ghost was unlinked again is the restore's own (a gap's IN_IGNORED, files it opened).
        copy = os.dup(ifd)
        r.late.append((f"{r.where}: dropping the events the restore caused", lambda: drain(copy), DRAIN_ORDER))
        return ifd
    except BaseException:
        os.close(ifd)
        raise


def drain(fd: int) -> None:
    """Read and drop every event waiting on our copy `fd` of an inotify fd (closed here)."""
    try:
        for _ in range(64):   # (bounded: each read takes what waits)
            n = queued(fd)
            if not n:
                return
            os.read(fd, n)
    finally:
        os.close(fd)


def _ghost(r: RestoreFd, w: dict) -> int:
    """An O_PATH fd on the ghost of watch `w` (a file unlinked while open; engine/ghosts.py)."""
    try:
        return r.open_ghost(w["ghost"], os.O_PATH, w["mnt"], w["path"])
    except (StopIteration, KeyError):
        raise FdError(errno.EINVAL, f"{r.where}: inotify watch {w['wd']}: no ghost {w['ghost']} on mount "
                                    f"{w['mnt']}") from None


register(FdKind(name="inotify", matches=lambda t, m: t == "anon_inode:inotify", dump=_dump, open=_open,
                check=_check, in_ns=_in_ns, finish=_finish, mounts=lambda e: [w["mnt"] for w in e["watches"]], fields={"watches": F(LIST)},
                precheck=_precheck))
