"""fanotify: a group with its init flags and its marks (inode, mount and filesystem marks, their
masks, ignored masks and mark flags), each on the restored equivalent of what it marked.

fdinfo shows all of it: `fanotify flags:F event-flags:E` (fanotify_init's
flags and event_f_flags), then one line per mark: `ino:I sdev:D ... f_handle:H`
(an inode, by file handle), `mnt_id:M` (a mount) or `sdev:D` alone (a
filesystem), each with `mflags` (FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE,
FAN_MARK_IGNORE: the fanotify_mark flags themselves), `mask` and `ignored_mask`.
Dump places an inode mark like an inotify watch (its handle opened through a
visible mount of its device, inside the process's namespace; by its inode number
where the handle does not open again, as on overlayfs without nfs_export:
engine/fds/inotify.py `locate_handle`, one helper for both), a mount mark on
that mount of the tree, a filesystem mark on any mount of the tree of that
device. Restore makes the group in the restorer (like inotify) and adds each
mark through an O_PATH fd on the restored mount.

Refused at dump: events waiting to be read (restore cannot make them again),
told before the tree is stopped (`precheck`: FIONREAD, which reads nothing;
events that arrive while dump runs, its own reads of a marked filesystem
included, are not kept); marks on what no mount of the tree reaches. Not kept:
pending permission requests (a listener that has not answered one would block
the tree at dump anyway).
"""

from __future__ import annotations

import ctypes
import errno
import os
from engine import rx

from engine.imageformat import INT, LIST, F
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.fds.inotify import locate_handle

_GROUP = rx.compile(r"^fanotify flags:([0-9a-f]+) event-flags:([0-9a-f]+)$", rx.M)
_INODE = rx.compile(r"^fanotify ino:([0-9a-f]+) sdev:([0-9a-f]+) mflags:([0-9a-f]+) mask:([0-9a-f]+) "
                    r"ignored_mask:([0-9a-f]+) fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) "
                    r"f_handle:([0-9a-f]+)$", rx.M)
_MOUNT = rx.compile(r"^fanotify mnt_id:([0-9a-f]+) mflags:([0-9a-f]+) mask:([0-9a-f]+) ignored_mask:([0-9a-f]+)$", rx.M)
_FS = rx.compile(r"^fanotify sdev:([0-9a-f]+) mflags:([0-9a-f]+) mask:([0-9a-f]+) ignored_mask:([0-9a-f]+)$", rx.M)

FAN_CLOEXEC, FAN_NONBLOCK = 0x1, 0x2
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_MARK_FILESYSTEM = 0x1, 0x10, 0x100
FAN_MARK_IGNORED_MASK, FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE = 0x20, 0x40, 0x200
FAN_MARK_IGNORE = 0x400
MARK_FLAGS = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE   # what fdinfo's mflags holds
TYPES = ("inode", "mount", "filesystem")
# fanotify_init classes that take permission events (FAN_CLASS_CONTENT, FAN_CLASS_PRE_CONTENT): an access
# to what such a group marks waits until the group's holder answers, which a stand-in never does.
PERM_CLASSES = 0x4 | 0x8
# FAN_UNLIMITED_QUEUE: events wait in kernel memory without bound; a stand-in never reads them.
UNLIMITED_QUEUE = 0x10


def _host_risk(init: int, kind: str) -> str | None:
    """Why a mark of this kind of group must lie on a filesystem made for the image alone, or None:
    a permission class group's inode or filesystem mark (the host's accesses there would wait for
    its answer), an unlimited queue's filesystem mark (every access to the host's filesystem would
    queue an event in kernel memory for good; an inode mark, as CRIU's fanotify00 holds, costs
    what that one file's accesses make)."""
    if init & PERM_CLASSES and kind != "mount":
        return "of a permission class group"
    if init & UNLIMITED_QUEUE and kind == "filesystem":
        return "of a group with an unlimited queue"
    return None
MAX_MARKS = 1 << 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def _in_ns(hostproc: int, pid: int, fd: int, mounts) -> dict:
    """In the namespace: the group's flags and its marks, inode marks located ({abs, mnt} or error)."""
    with open(os.open(f"{pid}/fdinfo/{fd}", os.O_RDONLY, dir_fd=hostproc)) as f:
        return _parse(f.read(), lambda sdev, htype, handle, ino: locate_handle(hostproc, mounts, sdev, htype, handle,
                                                                                ino=ino))


def _parse(text: str, locate) -> dict:
    """fdinfo `text` as the group's flags and its marks; each inode mark located by
    locate(sdev, handle type, handle, inode number) -> {abs, mnt} or None (an error then), or left
    unlocated when `locate` is None (before the stop)."""
    g = _GROUP.search(text)
    out = {"init": int(g[1], 16), "event_flags": int(g[2], 16), "marks": []} if g else {"error": "no group line"}
    for m in _INODE.finditer(text):
        sdev = int(m[2], 16)
        mark = {"type": "inode", "dev": f"{sdev >> 20}:{sdev & 0xFFFFF}", "mflags": int(m[3], 16),
                "mask": int(m[4], 16), "ignored": int(m[5], 16)}
        if locate is None:
            out["marks"].append({**mark, "unlocated": True})
            continue
        # (by its inode number where the handle does not open again: overlayfs without nfs_export)
        got = locate(sdev, int(m[7], 16), bytes.fromhex(m[8])[:int(m[6], 16)], int(m[1], 16))
        out["marks"].append({**mark, **got} if got else
                            {**mark, "error": f"an inode mark on device {sdev >> 20}:{sdev & 0xFFFFF}, which no "
                                              "visible mount reaches"})
    for m in _MOUNT.finditer(text):
        out["marks"].append({"type": "mount", "mnt": int(m[1], 16), "mflags": int(m[2], 16), "mask": int(m[3], 16),
                             "ignored": int(m[4], 16)})
    for m in _FS.finditer(text):
        sdev = int(m[1], 16)
        out["marks"].append({"type": "filesystem", "dev": f"{sdev >> 20}:{sdev & 0xFFFFF}", "mflags": int(m[2], 16),
                             "mask": int(m[3], 16), "ignored": int(m[4], 16)})
    return out


def _dump(d) -> dict:
    got = d.in_ns or {"error": "fdinfo unreadable"}
    return {"init": got["init"], "event_flags": got["event_flags"], "marks": _marks(d, got)}


def _marks(d, got: dict) -> list[dict]:
    """The image's marks of group `got` (_parse's) of fanotify fd `d`, refusing what restore cannot
    mark again; an unlocated inode mark (before the stop) is passed over."""
    if "error" in got:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: fanotify group: {got['error']}")
    every = {m.mnt_id: m for _pid, mounts in [(d.pid, d.mounts)] + list(d.elsewhere) for m in mounts}
    marks = []
    for i, k in enumerate(got["marks"]):
        what = f"fanotify {k['type']} mark {i}"
        rec = {"type": k["type"], "mflags": k["mflags"], "mask": k["mask"], "ignored": k["ignored"]}
        if k["mflags"] & ~MARK_FLAGS:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: {what}: mark flags {k['mflags']:#x} not supported")
        if "error" in k:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: {k['error']}: not supported")
        _refuse_blocking(d, got, k, every, what)
        if k.get("unlocated"):
            continue
        if k["type"] == "inode":
            loc = d.place(k["abs"], k["mnt"], f"fd {d.fd} {what}")
            if loc.get("detached"):
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: {what} on a detached mount: not supported")
            rec.update(mnt=loc["mnt"], path=loc["path"])
        elif k["type"] == "mount":
            if k["mnt"] not in every:
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: {what} on mount {k['mnt']}, which is in no mount "
                                                "namespace of the tree (a detached mount or one outside the dump): "
                                                "not supported")
            rec["mnt"] = k["mnt"]
        else:
            same = sorted((m for m in every.values() if m.dev == k["dev"]), key=lambda m: (len(m.root), m.mnt_id))
            if not same:
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: {what} on device {k['dev']}, which no mount of the "
                                                "tree shows: not supported")
            rec["mnt"] = same[0].mnt_id
        marks.append(rec)
    return marks


def _refuse_blocking(d, got: dict, k: dict, every: dict, what: str) -> None:
    """A mark `_host_risk` names on a filesystem that may be the host's too (fs.made_for_image):
    restored, the host's own accesses there would wait for a stand-in that never answers, or
    queue events it never reads. Refused (the validator refuses such an image too, and one on
    an external mount, which dump cannot tell here)."""
    from engine import fs
    risk = _host_risk(got["init"], k["type"])
    if risk is None:
        return
    types = sorted({m.fstype for m in every.values() if m.dev == k["dev"]})
    if not any(fs.made_for_image(t) for t in types):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: {what} {risk} on a "
                                        f"{'/'.join(types) or 'unknown'} filesystem: restore makes such marks "
                                        "only on filesystems it makes for the tree alone (tmpfs, ramfs, overlay, "
                                        "FUSE): not supported")


def _refs(e: dict) -> list:
    """The marks `_host_risk` names lie on filesystems made for the image."""
    return [("private", k, f"fanotify {k['type']} mark {i} {_host_risk(e['init'], k['type'])}")
            for i, k in enumerate(e["marks"]) if _host_risk(e["init"], k["type"])]


def _precheck(d) -> None:
    """Before the tree is stopped: `_marks`' refusals but those of inode marks (located by dump in
    the namespace), and a group whose events wait to be read (FIONREAD counts their bytes and takes
    none)."""
    with open(f"/proc/{d.pid}/fdinfo/{d.fd}") as f:
        _marks(d, _parse(f.read(), None))
    import fcntl
    import struct
    import termios
    queued = struct.unpack("i", fcntl.ioctl(d.copy(), termios.FIONREAD, b"\0\0\0\0"))[0]
    if queued:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: fanotify events wait to be read on it ({queued} bytes; restore "
                                        "cannot make them again): not supported")


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail, check_abs_path
    if not 0 <= entry["init"] < 1 << 32 or not 0 <= entry["event_flags"] < 1 << 32:
        _fail(f"{what}: bad fanotify flags")
    marks = entry["marks"]
    if len(marks) > MAX_MARKS:
        _fail(f"{what}: too many fanotify marks")
    for k in marks:
        if not isinstance(k, dict) or k.get("type") not in TYPES \
                or not all(type(k.get(x)) is int for x in ("mnt", "mflags", "mask", "ignored")) \
                or k["mflags"] & ~MARK_FLAGS or not 0 <= k["mask"] < 1 << 64 or not 0 <= k["ignored"] < 1 << 64 \
                or set(k) - {"type", "mnt", "path", "mflags", "mask", "ignored"} \
                or (k["type"] == "inode") != ("path" in k):
            _fail(f"{what}: bad fanotify mark")
        if "path" in k:
            check_abs_path(k["path"], f"{what} fanotify mark")


def _mark(gfd: int, flags: int, mask: int, proc: int, fd: int) -> None:
    """fanotify_mark on what our O_PATH fd `fd` is, by its /proc magic link (the kernel takes no
    O_PATH fd as the object itself): the same mount and inode."""
    if _libc.fanotify_mark(gfd, flags, ctypes.c_uint64(mask), proc, f"self/fd/{fd}".encode()) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fanotify_mark: {os.strerror(e)}")


def _open(r: RestoreFd) -> int:
    e = r.entry
    # The group's flags as they were (fdinfo shows FAN_CLOEXEC and FAN_NONBLOCK among them); our fd
    # is made close-on-exec at once, and its O_NONBLOCK is the dumped file's.
    init = e["init"]
    gfd = _libc.fanotify_init(init, e["event_flags"])
    if gfd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_init({init:#x}, {e['event_flags']:#x}): {os.strerror(err)}")
    try:
        os.set_inheritable(gfd, False)
        os.set_blocking(gfd, not e["flags"] & os.O_NONBLOCK)
        for k in e["marks"]:
            # (O_NOFOLLOW beneath the mount's root only, as for inotify: its root is a magic link)
            named = bool(k.get("path", "/").strip("/"))
            fd = r.open_at(k["mnt"], k.get("path", "/"), os.O_PATH | (os.O_NOFOLLOW if named else 0))
            try:
                kind = {"inode": 0, "mount": FAN_MARK_MOUNT, "filesystem": FAN_MARK_FILESYSTEM}[k["type"]]
                keep = k["mflags"] & (FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE)
                ignore = FAN_MARK_IGNORE if k["mflags"] & FAN_MARK_IGNORE else FAN_MARK_IGNORED_MASK
                if k["mask"] or not k["ignored"]:
                    _mark(gfd, FAN_MARK_ADD | kind | (k["mflags"] & FAN_MARK_EVICTABLE), k["mask"], r.proc, fd)
                if k["ignored"]:
                    _mark(gfd, FAN_MARK_ADD | kind | keep | ignore, k["ignored"], r.proc, fd)
            finally:
                os.close(fd)
        return gfd
    except BaseException:
        os.close(gfd)
        raise


register(FdKind(name="fanotify", matches=lambda t, m: t == "anon_inode:[fanotify]", dump=_dump, open=_open,
                check=_check, in_ns=_in_ns, mounts=lambda e: [k["mnt"] for k in e["marks"]], precheck=_precheck,
                refs=_refs,
                fields={"init": F(INT), "event_flags": F(INT), "marks": F(LIST)}))
