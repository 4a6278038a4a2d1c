"""Overlay layers on a detached mount: the layers' mount was lazily unmounted after the overlay was
made, and a process of the tree keeps it alive (detached) through a file on it.

The layer paths then lead nowhere, and the kernel shows no mount point of a detached mount. But the
overlay names its real directories in its file handles: a handle of the overlay's root asked with
AT_HANDLE_FID (Linux >= 6.5; overlayfs encodes it without nfs_export) is overlayfs' ovl_fb, which
carries the real layer directory's own handle (the upper one, flag OVL_FH_FLAG_PATH_UPPER, else the
topmost lower). Opened by handle on a held file of the detached mount (any fd of that filesystem's
mount serves as mount_fd), it is that directory on the detached mount: its path there, the tail of
the layer path the options name, gives where the detached mount was (the head), and ".." climbs to
the mount's root, from which the whole mount is archived (engine/detached.py) and each other layer
under the same head is looked up.
"""

from __future__ import annotations

import os
import stat

from engine import kernel
from engine.image import is_beneath, rel_to

_OVL_FB_MAGIC = 0xFB
_OVL_FH_FLAG_PATH_UPPER = 1 << 2
_OVL_FH_WIRE_OFFSET = 3        # ovl_fh's padding before its ovl_fb (the handle starts there)
_OVL_FB_HEADER = 5 + 16        # version, magic, len, flags, type; uuid
_AT_HANDLE_FID = 0x200


def root_fid(overlay_root: int) -> tuple[bool, int, bytes] | None:
    """(it is the upper layer's, real handle type, real handle) that overlayfs encodes for its root
    directory `overlay_root`; None when it encodes none (an older kernel, another layout)."""
    try:
        _, handle, _ = kernel.name_to_handle_at(overlay_root, "", kernel.AT_EMPTY_PATH | _AT_HANDLE_FID)
    except OSError:
        return None
    fb = handle[_OVL_FH_WIRE_OFFSET:]
    if len(fb) < _OVL_FB_HEADER or fb[1] != _OVL_FB_MAGIC or fb[2] > len(fb) or fb[2] <= _OVL_FB_HEADER:
        return None
    return bool(fb[3] & _OVL_FH_FLAG_PATH_UPPER), fb[4], bytes(fb[_OVL_FB_HEADER:fb[2]])


def held_on_detached(pids, visible: set[int]) -> list[tuple[int, str]]:
    """(mount id, /proc link) of one fd of processes `pids` on each mount no dumped
    namespace shows (`visible`: the ids they show)."""
    out, seen = [], set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    mnt = next(int(x.split()[1]) for x in f if x.startswith("mnt_id:"))
            except (OSError, StopIteration, ValueError):
                continue
            if mnt not in visible and mnt not in seen and _dir_or_file(f"/proc/{pid}/fd/{fd}"):
                seen.add(mnt)
                out.append((mnt, f"/proc/{pid}/fd/{fd}"))
    return out


def _dir_or_file(link: str) -> bool:
    """Whether /proc `link` leads to a directory or regular file (one that can be opened to read)."""
    try:
        st = os.stat(link)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)


def _open_mount_fd(link: str) -> int | None:
    """An fd on the file at /proc `link` that open_by_handle_at takes as its mount_fd (no O_PATH)."""
    if not _dir_or_file(link):
        return None
    try:
        return os.open(link, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def open_layer(fid: tuple[bool, int, bytes], link: str) -> int | None:
    """The real layer directory of `fid` opened (O_PATH) on the mount of the file at `link`, None
    when that mount's filesystem does not hold it."""
    mfd = _open_mount_fd(link)
    if mfd is None:
        return None
    try:
        return kernel.open_by_handle_at(mfd, fid[1], fid[2], os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return None
    finally:
        os.close(mfd)


def place(fid: tuple[bool, int, bytes], layers: list[tuple[str, str]], held: list[tuple[int, str]]):
    """(detached mount id, {layer path: path inside that mount}) for the layers (option, path) that
    lie on the detached mount holding the real directory `fid`, checked to be directories there;
    None when no held detached mount holds it or its path there is no tail of the layer's path."""
    from engine.detached import climb
    upper = [p for k, p in layers if k == "upperdir"]
    lower = [p for k, p in layers if k in ("lowerdir", "lowerdir+")]
    named = upper[0] if fid[0] and upper else (lower[0] if not fid[0] and lower else None)
    if named is None:
        return None
    for mnt, link in held:
        d = open_layer(fid, link)
        if d is None:
            continue
        try:
            inner = os.readlink(f"/proc/self/fd/{d}")
            root, _ = climb(os.dup(d), os.O_PATH)
        except OSError:
            os.close(d)
            continue
        try:
            if not inner.startswith("/") or not _same_at(root, inner, d):
                continue
            head = named[:len(named) - len(inner)] if inner != "/" else named
            if not head or (inner != "/" and not named.endswith(inner)) or not head.startswith("/"):
                continue
            head = head.rstrip("/") or "/"
            out = {}
            for _, path in layers:
                if is_beneath(path, head) and _same_at(root, "/" + rel_to(path, head), None):
                    out[path] = "/" + rel_to(path, head)
            return mnt, out
        finally:
            os.close(d)
            os.close(root)
    return None


def _same_at(root: int, inner: str, d: int | None) -> bool:
    """Whether `inner` is a directory beneath `root` (the same as fd `d`, when given)."""
    rel = inner.strip("/")
    try:
        fd = kernel.openat2(root, rel, os.O_PATH | os.O_DIRECTORY,
                            kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_XDEV) \
            if rel else os.dup(root)
    except OSError:
        return False
    try:
        if d is None:
            return True
        a, b = os.fstat(fd), os.fstat(d)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    finally:
        os.close(fd)


def root_dir(fid: tuple[bool, int, bytes], link: str) -> int | None:
    """An O_PATH fd on the root of the detached mount of the file at `link` (which holds the real
    layer directory `fid`), climbed to from that directory; None when it does not hold it."""
    from engine.detached import climb
    d = open_layer(fid, link)
    if d is None:
        return None
    return climb(d, os.O_PATH)[0]
