"""Dump side of detached mounts: files and cwds on lazily unmounted mounts (detached-mounts-idea.txt).

fdinfo gives such a file's mount id, but no namespace lists that mount. What
restore needs is where the detached mount's root lies in some superblock:

- the superblock is still mounted somewhere visible: take the file's handle
  (name_to_handle_at) and open it on the visible mount (open_by_handle_at);
  its path there, minus its path inside the detached mount, is the detached
  mount's root on that mount;
- the file lies outside every visible mount's root (the detached mount was
  wider than what stays visible): open a visible mount's root directory by
  handle *on the detached mount* and climb ".." to a fixed point, which is the
  detached mount's root or the superblock's root, both of known path; search
  there for the file's inode. The files that only the detached mount reaches
  are then archived from there (tmpfs, ramfs);
- it is not (a tmpfs only reachable through the fds): climb ".." from a
  directory fd (or cwd) to the detached mount's root and archive its whole
  content; with only regular files, archive those files.

Restore then clones the superblock at that root into a detached mount (never
attached anywhere) and opens the fds there.

A superblock no visible mount shows whose type is made from layers (a lazily
unmounted overlay) is recorded without archives: its options are read through
the file (statmount by fd), its layers resolved by the type in the namespace of
the process holding the file (`_remade`); restore makes it again from them.
"""

from __future__ import annotations

import errno
import io
import os
import stat

from engine import content, fs, kernel, nscopy
from engine.dumperror import DumpError
from engine.image import empty_roots, is_beneath, rel_to
from engine.placement import external_file_hint


class DetachedError(OSError):
    """A detached mount that cannot be dumped (one line)."""


def probe(pid: int, what: str) -> dict:
    """Facts about a process's fd/cwd/root that lies on a detached mount (read from the host)."""
    link = f"/proc/{pid}/{what}"
    fd = os.open(link, os.O_PATH)
    try:
        st = os.fstat(fd)
        try:
            htype, handle, _ = kernel.name_to_handle_at(fd, "", kernel.AT_EMPTY_PATH)
        except OSError:
            htype, handle = None, None
        return {"dev": f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", "is_dir": stat.S_ISDIR(st.st_mode),
                "is_reg": stat.S_ISREG(st.st_mode), "ino": st.st_ino, "mode": st.st_mode,
                "magic": kernel.fstatfs_type(fd), "mount_opts": kernel.mount_opts_of_fd(fd),
                "handle": (htype, handle), "link": link}
    finally:
        os.close(fd)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _path_through_clone(clone_fd: int, htype: int, handle: bytes) -> str | None:
    """Path of a file handle inside a clone of a visible mount (relative to that mount's root),
    or None when the clone cannot reach the file."""
    try:
        root = os.open(f"/proc/self/fd/{clone_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # a file bind: no directory to resolve the handle against
    try:
        fd = kernel.open_by_handle_at(root, htype, handle, os.O_PATH)
    except OSError:
        os.close(root)
        return None
    try:
        # The clone is detached: its fds' paths start at the clone's root. A file
        # outside that root still opens by handle, but its link then reads "/" or
        # a partial path: only a path that resolves back to the same inode counts.
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not path.startswith("/"):
            return None
        if path == "/":
            back = os.open(".", os.O_PATH | os.O_CLOEXEC, dir_fd=root)
        else:
            try:
                back = kernel.openat2(root, path.lstrip("/"), os.O_PATH | os.O_NOFOLLOW,
                                      kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_MAGICLINKS | kernel.RESOLVE_NO_XDEV)
            except OSError:
                return None
        try:
            return path if _same(os.fstat(back), os.fstat(fd)) else None
        finally:
            os.close(back)
    finally:
        os.close(fd)
        os.close(root)


def root_via_visible(facts: dict, inner_path: str, candidates, clone_of) -> tuple[int, str] | None:
    """(visible mount id, root of the detached mount inside that mount) through the file handle;
    None when no visible mount reaches the file (see locate_outside).

    `candidates` are Mounts of the same superblock, widest root first;
    `clone_of(mount)` gives a detached clone of one (covered ones included) or None.
    """
    htype, handle = facts["handle"]
    for m in candidates:
        clone = clone_of(m)
        if clone is None:
            continue
        try:
            if htype is not None:
                on_mount = _path_through_clone(clone, htype, handle)
            else:
                on_mount = _path_by_inode(clone, facts["dev"], facts["ino"])
        finally:
            os.close(clone)
        if on_mount is None:
            continue
        if inner_path == "/":
            return m.mnt_id, on_mount
        if on_mount == inner_path or on_mount.endswith(inner_path):
            root = on_mount[: len(on_mount) - len(inner_path)] or "/"
            return m.mnt_id, root
        # Another hard link's name: the search in locate_outside picks the right one.
    if htype is None:
        raise DetachedError(errno.EOPNOTSUPP, "the filesystem gives no file handles, and no visible mount of "
                                              f"it shows the file (inode {facts['ino']}) within {_WALK_LIMIT} entries")
    return None


# How many entries the search by inode (filesystems without file handles: pseudo ones, ramfs)
# looks at per visible mount; the kernel-made trees of tracefs or debugfs are larger than that.
_WALK_LIMIT = 20000


def _path_by_inode(clone_fd: int, dev: str, ino: int) -> str | None:
    """Path (from the root of a clone of a visible mount) of the inode `ino` on device `dev`, found by
    walking that one filesystem breadth-first (lstat only, nothing is read); None if not within the limit."""
    top = f"/proc/self/fd/{clone_fd}"
    try:
        st = os.stat(top)
    except OSError:
        return None
    if f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" != dev:
        return None
    if st.st_ino == ino:
        return "/"
    seen = 0
    queue = [""]
    while queue and seen < _WALK_LIMIT:
        rel = queue.pop(0)
        try:
            names = os.listdir(os.path.join(top, rel) if rel else top)
        except OSError:
            continue
        for name in names:
            seen += 1
            path = f"{rel}/{name}" if rel else name
            try:
                child = os.lstat(os.path.join(top, path))
            except OSError:
                continue
            if child.st_dev != st.st_dev:
                continue
            if child.st_ino == ino:
                return "/" + path
            if stat.S_ISDIR(child.st_mode):
                queue.append(path)
    return None


def _clone_root(clone_of, m) -> int | None:
    """A directory fd (not O_PATH: handles resolve on it) on the root of a private clone of mount
    m, or None where no clone can be made or its root is a file (a file bind)."""
    clone = clone_of(m)
    if clone is None:
        return None
    try:
        return os.open(f"/proc/self/fd/{clone}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(clone)


def climb(d: int, flags: int) -> tuple[int, int]:
    """(an fd opened with `flags` on the fixed point of ".." from directory fd `d`, which it takes,
    the steps climbed): the root of d's mount, or of its superblock from outside that root. No fd
    is left open when a step fails (a directory removed meanwhile)."""
    steps = 0
    try:
        while True:
            up = os.open("..", flags | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=d)
            if _same(os.fstat(d), os.fstat(up)):
                os.close(up)
                return d, steps
            os.close(d)
            d, steps = up, steps + 1
    except BaseException:
        os.close(d)
        raise


def _anchorable(facts: dict) -> None:
    """Refuse (DetachedError) a file `anchor` cannot locate outside every visible mount of its
    filesystem: one that is neither a regular file nor a directory."""
    if not (facts["is_dir"] or facts["is_reg"]):
        raise DetachedError(errno.EOPNOTSUPP, "only a regular file or directory outside every visible mount "
                                              "of its filesystem can be located")


def anchor(facts: dict, candidates, clone_of) -> tuple[int, str]:
    """(directory fd on the detached mount, its path in the superblock): the fixed point of ".."
    from a visible mount's root opened by handle on the detached mount.

    ".." stops at the detached mount's root, or, from outside it, at the
    superblock's root; either way the steps climbed from the visible root (of
    known path) give the fixed point's path.
    """
    _anchorable(facts)
    # open_by_handle_at wants a real (not O_PATH) fd on the mount it resolves on.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY | (os.O_DIRECTORY if facts["is_dir"] else 0)
    pfd = os.open(facts["link"], flags)
    try:
        for m in candidates:
            root = _clone_root(clone_of, m)
            if root is None:
                continue
            try:
                htype, handle, _ = kernel.name_to_handle_at(root, "", kernel.AT_EMPTY_PATH)
            finally:
                os.close(root)
            d, steps = climb(kernel.open_by_handle_at(pfd, htype, handle, os.O_RDONLY | os.O_DIRECTORY),
                             os.O_RDONLY)
            parts = [c for c in m.root.split("/") if c]
            if steps > len(parts):
                os.close(d)
                raise DetachedError(errno.EIO, f"climbed {steps} levels above the root {m.root} of mount "
                                               f"{m.mnt_id}: the filesystem changed while it was dumped")
            return d, "/" + "/".join(parts[: len(parts) - steps])
        raise DetachedError(errno.EOPNOTSUPP, "no visible mount of its filesystem is a directory to locate it from")
    finally:
        os.close(pfd)


def locate_outside(facts: dict, inner_path: str, d_fd: int, d_path: str) -> str:
    """Root of the detached mount in its superblock: search the tree at `d_fd` (superblock path
    `d_path`, from anchor) for the file's inode under a name ending in `inner_path`."""
    top = f"/proc/self/fd/{d_fd}"
    top_st = os.stat(top)
    want = (top_st.st_dev, facts["ino"])

    def root_if(rel: str) -> str | None:
        full = d_path if rel == "/" else (rel if d_path == "/" else d_path + rel)
        if inner_path == "/":
            return full
        if full.endswith(inner_path):
            return full[: len(full) - len(inner_path)] or "/"
        return None

    if (top_st.st_dev, top_st.st_ino) == want and (r := root_if("/")) is not None:
        return r
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) == want:
                r = root_if("/" + os.path.relpath(os.path.join(dirpath, name), top))
                if r is not None:
                    return r
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == top_st.st_dev]
    raise DetachedError(errno.ENOENT, f"its file ({inner_path}) is found nowhere in its filesystem "
                                      "(unlinked, or renamed while dumped?)")


def archive_invisible(locs: list[tuple[dict, str]], out_path: str, layer: tuple | None = None,
                      flags: list | None = None) -> dict:
    """Archive a detached tmpfs reachable only through fds (member sb-0): its whole tree from a
    directory, else the files. Returns the archive's size and sha256; the inode attributes tar keeps
    none of (chattr i, a, d) go into `flags` (an archive reference's `attrs`).

    `locs` are (probe facts, path inside the detached mount); `layer`: the handle of an overlay
    layer directory on it (engine/fs/_layers_detached.py), a directory to climb from when the fds
    are only files.
    """
    if layer is not None:
        from engine.fs import _layers_detached
        fd = _layers_detached.root_dir(layer, locs[0][0]["link"])
        if fd is not None:
            try:
                return content.archive_dir(fd, out_path, flags=flags)
            finally:
                os.close(fd)
    dirs = [(f, p) for f, p in locs if f["is_dir"]]
    if dirs:
        facts, inner = dirs[0]
        # Climb to the detached mount's root: ".." stops there (it has no parent).
        fd, _ = climb(os.open(facts["link"], os.O_PATH | os.O_DIRECTORY), os.O_PATH)
        try:
            # A mount in no namespace cannot be cloned (open_tree says EINVAL); its
            # children were disconnected by the lazy umount, so archive it in place.
            return content.archive_dir(fd, out_path, flags=flags)
        finally:
            os.close(fd)
    import tarfile  # only for invisible mounts: kept out of every dump's start-up
    with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
        made = {"sb-0"}
        root = tarfile.TarInfo("sb-0")
        root.type, root.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(root)
        for facts, inner in locs:
            parts = ["sb-0"] + [c for c in inner.split("/") if c]
            for i in range(2, len(parts)):
                d = "/".join(parts[:i])
                if d not in made:
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                    made.add(d)
            name = "/".join(parts)
            if name in made:
                continue
            made.add(name)
            if not facts["is_reg"]:
                node = _node(facts["link"], name)
                if node is not None:
                    tar.addfile(node)
                continue
            with open(facts["link"], "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
                attrs = kernel.statx_attributes("", f.fileno(), kernel.AT_EMPTY_PATH)[0] & content.INODE_FLAGS
                if attrs and flags is not None:
                    flags.append({"path": "/" + "/".join(parts[1:]), "flags": attrs})
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), stat.S_IMODE(st.st_mode)
                info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
                tar.addfile(info, io.BytesIO(data))
    return content.digest_path(out_path)


def _node(link: str, name: str):
    """The tar member (named `name`) of the file that is no regular file behind magic link `link`:
    the node alone, never its content (a FIFO's read would block, /dev/zero's never end): a FIFO
    (a process's pipe on it is dumped by engine/fds/pipe.py), a device node (made at restore as
    the --devices policy allows), a symlink an O_PATH fd holds (its own target, not the magic
    link's); None for a socket's file (its socket binds it again: engine/fds/unix.py)."""
    import tarfile
    fd = os.open(link, os.O_PATH | os.O_CLOEXEC)   # (the symlink itself, if one)
    try:
        st = os.fstat(fd)
        if stat.S_ISSOCK(st.st_mode):
            return None
        info = tarfile.TarInfo(name)
        info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
        if stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink("", dir_fd=fd)
        else:
            raise DetachedError(errno.EOPNOTSUPP, f"{name[len('sb-0'):]}: a directory that was not one when "
                                                  "it was probed (changed while dumped)")
        return info
    finally:
        os.close(fd)


def sb_by_handle(facts: dict, sb_of_dev, superblocks, ns_data, clone_of) -> tuple[str | None, str | None]:
    """(sb id, mountinfo device) of the dumped superblock a detached file lies on when its st_dev is
    no mount's: the one a visible mount of which opens the file's handle as the same file (device
    and inode); (None, None) when none does (or the filesystem gives no handles)."""
    htype, handle = facts["handle"]
    if htype is None:
        return None, None
    widest: dict[str, object] = {}
    for data in ns_data.values():
        for m in data["mounts"]:
            sid = sb_of_dev.get(m.dev)
            if sid is None or superblocks[sid]["external"]:
                continue
            if sid not in widest or len(m.root) < len(widest[sid].root):
                widest[sid] = m
    for sid, m in sorted(widest.items()):
        root = _clone_root(clone_of, m)
        if root is None:
            continue
        try:
            fd = kernel.open_by_handle_at(root, htype, handle, os.O_PATH)
        except OSError:
            continue
        finally:
            os.close(root)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if (f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", st.st_ino) == (facts["dev"], facts["ino"]):
            return sid, m.dev
    return None, None


def _by_mount(unplaced) -> dict[int, list[tuple[dict, int, str]]]:
    """`unplaced` items (location, pid, /proc link) grouped by their detached mount's id."""
    by_mnt: dict[int, list[tuple[dict, int, str]]] = {}
    for item in unplaced:
        by_mnt.setdefault(item[0]["mnt"], []).append(item)
    return by_mnt


def _cloner(ns_data, by_mntns):
    """clone_of(m): a detached clone of mount m of a namespace of `ns_data` (its processes in
    `by_mntns`), even if covered (the clone helper uncovers it in a copy of the namespace)."""
    ns_of_mount = {m.mnt_id: ino for ino, data in ns_data.items() for m in data["mounts"]}

    def clone_of(m) -> int | None:
        ino = ns_of_mount[m.mnt_id]
        return nscopy.clone_one(by_mntns[ino], ns_data[ino]["mounts"], m.mnt_id)
    return clone_of


def _where(mnt: int, item: tuple[dict, int, str]) -> tuple[str, str]:
    """(how a refusal names the first file (location, pid, link) held on detached mount `mnt`, the
    hint it ends with: how to declare an fd's file instead, else ''). A file a kind found through
    our own fd on it names its holder (`holder`: a socket's file)."""
    loc, pid, link = item
    # A lazily unmounted mount, or a mount of a namespace outside the tree (opened before unshare).
    if "holder" in loc:
        return f"{loc['holder']}: its file ({loc['path']}) on mount {mnt}, in no dumped namespace", ""
    hint = f"; {external_file_hint(loc['path'])}" if link.startswith("fd/") else ""
    return f"process {pid} {link.replace('fd/', 'fd ')} ({loc['path']}) on mount {mnt}, in no dumped namespace", hint


def _failed(where: str, hint: str, e: OSError) -> DumpError:
    """The refusal of a detached mount whose planning failed with `e`."""
    return DumpError(e.errno or errno.EIO, f"{where}: {e.strerror or e}{hint}")


def _superblock(f0: dict, sb_of_dev, superblocks, ns_data, clone_of) -> tuple[str | None, str | None]:
    """(sb id, device of its mounts) of the dumped superblock detached file `f0` (probe) lies on;
    (None, None) when no visible mount shows its filesystem."""
    sid = sb_of_dev.get(f0["dev"])
    if sid is not None:
        return sid, f0["dev"]
    # Files may show another device than the mounts of their superblock (a subvolume's own
    # anonymous device): the superblock whose mount opens the file's handle as it.
    return sb_by_handle(f0, sb_of_dev, superblocks, ns_data, clone_of)


def _invisible_type(f0: dict, where: str, hint: str):
    """The type of a filesystem no visible mount shows: one whose files are dumped (whole, from the
    detached mount) or one made again from layers (`_remade`); any other is refused."""
    found = fs.by_magic(f0["magic"])
    if found is None:
        raise DumpError(errno.EOPNOTSUPP, f"{where}: its filesystem (magic {f0['magic']:#x}) is mounted nowhere "
                                          f"visible (only a detached {fs.content_names()} can be "
                                          f"dumped whole){hint}")
    return found


# What statmount tells of a detached mount: its superblock's type, source, flags and options, its root.
_SB_FACTS = (kernel.STATMOUNT_SB_BASIC | kernel.STATMOUNT_MNT_BASIC | kernel.STATMOUNT_MNT_ROOT
             | kernel.STATMOUNT_FS_TYPE | kernel.STATMOUNT_MNT_OPTS | kernel.STATMOUNT_SB_SOURCE)
# Superblock flags mountinfo shows among the super options (engine/fs SB_FLAG_OPTS), by their bit.
_SB_FLAG_BITS = (("sync", 0x10), ("dirsync", 0x80), ("lazytime", 1 << 25))


def _remade(items, f0: dict, ftype, sid: str, view, where: str, hint: str) -> tuple[dict, str]:
    """(superblock record, the detached mount's root in it) of a `layers` type no visible mount
    shows, made again from the layers its options name: the options read through the file `f0`
    (statmount by fd; a kernel without it is refused), the layers resolved in the namespace of
    the process that holds the first of `items` (`view`: dump's plan, or prestop's view of the
    running tree). A socket's file there is refused: restore binds sockets on attached mounts."""
    pid = items[0][1]
    fd = os.open(f0["link"], os.O_PATH | os.O_CLOEXEC)
    try:
        info = kernel.statmount_fd(fd, _SB_FACTS)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):   # (no STATMOUNT_BY_FD; no statmount at all: < 6.8)
            raise
        raise DumpError(errno.EOPNOTSUPP, f"{where}: its filesystem (magic {f0['magic']:#x}) is mounted nowhere "
                                          f"visible (only a detached {fs.content_names()} can be dumped whole); "
                                          f"{ftype.name} is made again from the layers its mount options name, which "
                                          "this kernel shows of no mount in no namespace (statmount by fd, "
                                          f"STATMOUNT_BY_FD, comes after Linux 6.18){hint}") from None
    finally:
        os.close(fd)
    if any("holder" in loc for loc, _, _ in items):
        raise DetachedError(errno.EOPNOTSUPP, f"a socket's file on this {ftype.name}, which only a detached "
                                              "mount shows: not supported")
    ns_name = next((n for n, pids in view.ns_pids.items() if pid in pids), None)
    if ns_name is None or info["fs_type"] != ftype.name:
        raise DetachedError(errno.EOPNOTSUPP, f"a {info['fs_type']} whose holder is in no dumped mount namespace")
    me = kernel.ns_ino("self", "user")
    if any(kernel.ns_ino(p, "user") not in (me, None) for pids in view.ns_pids.values() for p in pids):
        # Which one owns it (engine/sbowner.py) is asked through a mount's root, which no fd gives here.
        raise DetachedError(errno.EOPNOTSUPP, f"this {ftype.name}, which only a detached mount shows, is in a "
                                              f"tree with user namespaces (which one owns the {ftype.name} is not "
                                              "told): not supported")
    opts = ["ro" if info["sb_flags"] & 1 else "rw"] + [o for o, bit in _SB_FLAG_BITS if info["sb_flags"] & bit]
    sb = {"fstype": ftype.name, "source": info["sb_source"] or "none",
          "super_opts": opts + [o for o in (info["mnt_opts"] or "").split(",") if o],
          "dev": f0["dev"], "external": False, "archives": []}
    try:
        ftype.plan_detached(sid, sb, view, ns_name, {"id": info["mnt_id_old"], "uid": info["mnt_id"],
                                                     "mountpoint": "(detached)"})
    except fs.FsError as e:
        raise DumpError(e.errno or errno.EOPNOTSUPP, f"{where}: {e.strerror}{hint}") from None
    return sb, info["mnt_root"] or "/"


def _on_visible(f0: dict, inner: str, sid: str, dev: str, superblocks, ns_data, clone_of, where: str, hint: str):
    """(candidate mounts of superblock `sid`, widest root first; root_via_visible's answer) for
    detached file `f0` at `inner` in its mount; a file of an external filesystem no visible mount
    reaches is refused: restore reaches one only through its external mounts (a host log a runtime
    gave as stdout cannot be reopened)."""
    candidates = sorted((m for data in ns_data.values() for m in data["mounts"] if m.dev == dev),
                        key=lambda m: (len(m.root), m.mnt_id))
    found = root_via_visible(f0, inner, candidates, clone_of)
    if found is None and superblocks[sid]["external"]:
        raise DumpError(errno.EOPNOTSUPP, f"{where}: no external mount of its filesystem "
                                          f"reaches the file{hint}")
    return candidates, found


def precheck(unplaced, superblocks, sb_of_dev, ns_data, by_mntns, view, unsure=()) -> None:
    """Before the stop (engine/prestop.py): refuse (DumpError, with plan's line) what `plan` would
    refuse of the detached mounts `unplaced` lie on, read from the running tree, archiving
    nothing: a filesystem mounted nowhere visible whose files are not dumped, nor made again from
    layers (`_remade`, asked here as plan asks it: a lazily unmounted overlay where the kernel
    shows no options of it, or whose layers do not lead to visible mounts), a file no external
    mount of its filesystem reaches, one that neither a handle nor a search finds on a visible
    mount, one outside every visible mount that is no regular file or directory or whose
    filesystem no visible mount is a directory of (`anchor`; the search for its name,
    locate_outside, is plan's alone). Superblocks in `unsure` (externality told once stopped)
    and files gone or changed meanwhile are left to plan, which checks everything again."""
    clone_of = _cloner(ns_data, by_mntns)
    for mnt, items in sorted(_by_mount(unplaced).items()):
        loc0, pid0, link0 = items[0]
        where, hint = _where(mnt, items[0])
        try:
            f0 = probe(pid0, link0)
            sid, dev = _superblock(f0, sb_of_dev, superblocks, ns_data, clone_of)
            if sid is None:
                found_type = _invisible_type(f0, where, hint)
                if not found_type.content:
                    _remade(items, f0, found_type, f"sb-{len(superblocks)}", view, where, hint)
            elif sid not in unsure:
                candidates, found = _on_visible(f0, loc0["path"], sid, dev, superblocks, ns_data, clone_of, where,
                                                hint)
                if found is None:
                    os.close(anchor(f0, candidates, clone_of)[0])
        except DumpError:
            raise
        except DetachedError as e:
            if e.errno == errno.EIO:
                continue   # (climbed too far: the filesystem changed meanwhile; plan tells)
            raise _failed(where, hint, e) from None
        except OSError:
            continue   # (closed or gone meanwhile: plan tells, once the tree is stopped)


def plan(unplaced, superblocks, sb_of_dev, ns_data, by_mntns, mounts_by_id, writer, files, view) -> dict:
    """Describe each detached mount that a process holds a file or cwd on (`unplaced`: (location, pid,
    /proc link) from engine.placement), archiving what only such mounts reach, recording the
    superblocks made again from layers (refusals told before the stop too: precheck). `view`:
    dump's plan, which a type's `plan_detached` reads."""
    out: dict[str, dict] = {}
    remade: dict[str, str] = {}    # device -> sb id of a superblock made again from layers
    clone_of = _cloner(ns_data, by_mntns)
    anchors: list[int] = []
    beyond: list[tuple[str, str, int, str]] = []
    try:
        for mnt, items in sorted(_by_mount(unplaced).items()):
            where, hint = _where(mnt, items[0])
            try:
                facts = [(probe(pid, link), loc["path"]) for loc, pid, link in items]
                f0 = facts[0][0]
                sid, dev = _superblock(f0, sb_of_dev, superblocks, ns_data, clone_of)
                if sid is not None:
                    candidates, found = _on_visible(f0, facts[0][1], sid, dev, superblocks, ns_data, clone_of,
                                                    where, hint)
                    if found is not None:
                        vis, root_on_v = found
                        vroot = mounts_by_id[vis].root
                        root = vroot if root_on_v == "/" else (root_on_v if vroot == "/" else vroot + root_on_v)
                    else:
                        d_fd, d_path = anchor(f0, candidates, clone_of)
                        anchors.append(d_fd)
                        root = locate_outside(f0, facts[0][1], d_fd, d_path)
                        if fs.lookup(superblocks[sid]["fstype"]).content:
                            beyond.append((sid, root, d_fd, d_path))
                elif not (found_type := _invisible_type(f0, where, hint)).content:
                    sid = remade.get(f0["dev"], f"sb-{len(superblocks)}")
                    sb, root = _remade(items, f0, found_type, sid, view, where, hint)
                    remade[f0["dev"]] = sid
                    superblocks.setdefault(sid, sb)
                else:
                    sid = f"sb-{len(superblocks)}"
                    name, path = writer.new_archive()
                    attrs: list[dict] = []
                    files[name] = archive_invisible(facts, path, (getattr(view, "layer_anchors", None) or {}).get(mnt),
                                                    attrs)
                    arc = {"file": name, "member": "sb-0", "root": "/", **({"attrs": attrs} if attrs else {})}
                    superblocks[sid] = {"fstype": found_type.name, "source": "none", "super_opts": ["rw"], "dev": f0["dev"],
                                        "external": False, "archives": [arc]}
                    root = "/"
            except DumpError:
                raise
            except OSError as e:
                raise _failed(where, hint, e) from None
            out[str(mnt)] = {"id": mnt, "sb": sid, "root": root, "mount_opts": f0["mount_opts"],
                             "mountpoint": "(detached)"}
        _archive_beyond(beyond, superblocks, writer, files)
    finally:
        for fd in anchors:
            os.close(fd)
    return out


def _archive_beyond(beyond, superblocks, writer, files) -> None:
    """Archive what only detached mounts reach of a content superblock: each widest detached root
    (sb id, root, anchor fd, anchor path) not already archived, minus the archived roots inside it."""
    done: dict[str, list[str]] = {}
    for sid, root, d_fd, d_path in sorted(beyond, key=lambda b: (b[0], len(b[1]), b[1])):
        sb = superblocks[sid]
        covered = [a["root"] for a in sb["archives"] if "only" not in a] + [e["root"] for e in empty_roots(sb)]
        if any(is_beneath(root, c) for c in covered + done.get(sid, [])):
            continue
        rel = rel_to(root, d_path)
        r_fd = d_fd if not rel else kernel.openat2(d_fd, rel, os.O_PATH | os.O_DIRECTORY,
                                                   kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_XDEV)
        attrs: list[dict] = []
        try:
            name, path = writer.new_archive()
            files[name] = content.archive_dir(r_fd, path, [rel_to(c, root) for c in covered if is_beneath(c, root)],
                                              attrs)
        finally:
            if r_fd != d_fd:
                os.close(r_fd)
        sb["archives"].append({"file": name, "member": "sb-0", "root": root, **({"attrs": attrs} if attrs else {})})
        done.setdefault(sid, []).append(root)
