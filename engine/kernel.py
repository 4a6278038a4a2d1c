"""ctypes bindings for the mount and namespace syscalls the engine uses.

x86_64 and aarch64 share the new mount API numbers (they were allocated
together for all architectures). Every wrapper raises OSError with errno and a
message naming the call, so callers can turn failures into one-line errors.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# How the kernel shows a path whose file was unlinked (/proc/PID/fd links, fdinfo, maps).
DELETED = " (deleted)"


def undeleted(path: str) -> tuple[str, bool]:
    """`path` without the kernel's " (deleted)" suffix, and whether it had it."""
    return (path[: -len(DELETED)], True) if path.endswith(DELETED) else (path, False)


# Syscall numbers (unified table for the new mount API; classic ones per arch).
_ARCH = os.uname().machine
if _ARCH == "x86_64":
    NR = dict(setns=308, unshare=272, pivot_root=155, name_to_handle_at=303, open_by_handle_at=304,
              statx=332, mount=165, umount2=166, setgroups=116, setresuid=117, setresgid=119, tgkill=234,
              rt_sigaction=13, rt_sigprocmask=14, getdents64=217)
elif _ARCH in ("aarch64", "arm64"):
    NR = dict(setns=268, unshare=97, pivot_root=41, name_to_handle_at=264, open_by_handle_at=265,
              statx=291, mount=40, umount2=39, setgroups=159, setresuid=147, setresgid=149, tgkill=131,
              rt_sigaction=134, rt_sigprocmask=135, getdents64=61)
else:  # pragma: no cover - other architectures are not supported yet
    raise ImportError(f"mntcr: unsupported architecture {_ARCH}")
NR.update(open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432, fspick=433,
          mount_setattr=442, statmount=457, listmount=458)

# open_tree
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
AT_FDCWD = -100

# move_mount
MOVE_MOUNT_F_SYMLINKS = 0x01
MOVE_MOUNT_F_AUTOMOUNTS = 0x02
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_SYMLINKS = 0x10
MOVE_MOUNT_T_AUTOMOUNTS = 0x20
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOVE_MOUNT_SET_GROUP = 0x100
MOVE_MOUNT_BENEATH = 0x200

# fsopen / fsconfig / fsmount
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_BINARY = 2
FSCONFIG_SET_PATH = 3
FSCONFIG_SET_PATH_EMPTY = 4
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSCONFIG_CMD_RECONFIGURE = 7
FSMOUNT_CLOEXEC = 0x1

# mount attributes (mount_setattr, fsmount)
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x00
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_IDMAP = 0x100000
MOUNT_ATTR_NOSYMFOLLOW = 0x200000

# propagation (mount(2) flags, also mount_attr.propagation)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20

MNT_DETACH = 2

# clone / unshare flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# statx
STATX_MNT_ID = 0x1000
STATX_MNT_ID_UNIQUE = 0x4000

# statmount / listmount
STATMOUNT_SB_BASIC = 0x1
STATMOUNT_MNT_BASIC = 0x2
STATMOUNT_PROPAGATE_FROM = 0x4
STATMOUNT_MNT_ROOT = 0x8
STATMOUNT_MNT_POINT = 0x10
STATMOUNT_FS_TYPE = 0x20
STATMOUNT_MNT_NS_ID = 0x40
STATMOUNT_MNT_OPTS = 0x80
STATMOUNT_FS_SUBTYPE = 0x100
STATMOUNT_SB_SOURCE = 0x200
STATMOUNT_BY_FD = 0x1            # statmount flag: mnt_id_req names an fd, not a mount id
LSMT_ROOT = 0xFFFFFFFFFFFFFFFF
MNT_ID_REQ_SIZE_VER0 = 24
MNT_ID_REQ_SIZE_VER1 = 32


def _check(ret: int, what) -> int:
    """`ret`, or OSError naming the call: `what` is its text, or a callable making it (hot
    wrappers format their message only when they fail)."""
    if ret < 0:
        _failed(what() if callable(what) else what)
    return ret


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Start writing the dirty pages of the file open on `fd` to disk, without waiting
    (sync_file_range SYNC_FILE_RANGE_WRITE): a later fsync then mostly waits for the journal.
    No durability of its own; a filesystem that does not take it is left to the fsync."""
    _libc.sync_file_range(ctypes.c_int(fd), ctypes.c_longlong(0), ctypes.c_longlong(0),
                          ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))


def syscall(name: str, *args) -> int:
    """The raw syscall `name` (of NR) with ctypes `args`: its result, or OSError naming it."""
    return _check(_syscall(NR[name], *args), name)


def _failed(what: str):
    """Raise the OSError of the call that just failed (errno), naming it."""
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | bytes | None) -> bytes | None:
    # os.fsencode, inlined: this runs for every path of every mount syscall.
    if type(path) is str:
        return path.encode("utf-8", "surrogateescape") if path else b""
    return path


def _uint(v: int):
    """An unsigned int argument: a plain int when it fits a C int (ctypes passes it as one, the
    same bits; a c_uint object costs ~1 us more a call to make and convert), else a c_uint.
    (The hottest wrappers test the bound inline: a call a syscall is ~8 interpreter steps.)"""
    return v if 0 <= v < 0x80000000 else ctypes.c_uint(v)


# The hot wrappers below (restore makes several of these calls a mount) pass fds and flags as
# plain ints (ctypes passes them as C ints, as c_int would), an empty path without a call, the
# same argument structs again (made once per value: the kernel only reads them), and format
# their message only when they fail.

def open_tree(dfd: int, path: str, flags: int) -> int:
    """open_tree(2): an O_PATH fd on a mount, or (OPEN_TREE_CLONE) on a detached copy."""
    flags |= OPEN_TREE_CLOEXEC
    fd = _syscall(NR["open_tree"], dfd, b"" if path == "" else _b(path), flags if flags < 0x80000000 else _uint(flags))
    if fd < 0:
        _failed(f"open_tree({path!r})")
    return fd


def move_mount(from_dfd: int, from_path: str, to_dfd: int, to_path: str, flags: int) -> None:
    """move_mount(2): attach/move a mount, or with MOVE_MOUNT_SET_GROUP copy sharing."""
    if _syscall(NR["move_mount"], from_dfd, b"" if from_path == "" else _b(from_path), to_dfd,
                b"" if to_path == "" else _b(to_path), flags if flags < 0x80000000 else _uint(flags)) < 0:
        _failed(f"move_mount({from_path!r} -> {to_path!r})")


def fsopen(fstype: str) -> int:
    """fsopen(2): a filesystem context for `fstype`."""
    return _check(_syscall(NR["fsopen"], _b(fstype), FSOPEN_CLOEXEC), lambda: f"fsopen({fstype!r})")


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | bytes | None = None, aux: int = 0) -> None:
    """fsconfig(2)."""
    val = _b(value) if isinstance(value, str) else value
    ret = _syscall(NR["fsconfig"], fd, _uint(cmd), _b(key), val, aux)
    if ret < 0:
        err = ctypes.get_errno()
        detail = read_fs_log(fd)
        raise OSError(err, f"fsconfig({key or cmd!r}{'=' + repr(value) if value is not None else ''}): "
                           f"{os.strerror(err)}{': ' + detail if detail else ''}")


def read_fs_log(fd: int) -> str:
    """Messages the kernel queued on a filesystem context (why fsconfig failed)."""
    msgs = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        msgs.append(data.decode(errors="replace").strip())
    return "; ".join(msgs)


def fsmount(fd: int, attr_flags: int = 0) -> int:
    """fsmount(2): a detached mount of the superblock created on `fd`."""
    return _check(_syscall(NR["fsmount"], fd, FSMOUNT_CLOEXEC, _uint(attr_flags)),
                  "fsmount")


def scratch_tmpfs() -> int:
    """A detached mount of a new, empty tmpfs (a yard or staging area for the engine's own use)."""
    fc = fsopen("tmpfs")
    try:
        fsconfig(fc, FSCONFIG_CMD_CREATE)
        return fsmount(fc)
    finally:
        os.close(fc)


FSPICK_CLOEXEC = 0x1
FSPICK_EMPTY_PATH = 0x8


def fspick(dfd: int, path: str, flags: int) -> int:
    """fspick(2): a filesystem context for reconfiguring the superblock at a mount's root."""
    return _check(_syscall(NR["fspick"], ctypes.c_int(dfd), _b(path), ctypes.c_uint(flags | FSPICK_CLOEXEC)),
                  lambda: f"fspick({path!r})")


def superblock_readonly(mount_fd: int) -> None:
    """Make the superblock of the mount at `mount_fd` (its root; detached is fine) read-only."""
    fd = fspick(mount_fd, "", FSPICK_EMPTY_PATH)
    try:
        fsconfig(fd, FSCONFIG_SET_FLAG, "ro")
        fsconfig(fd, FSCONFIG_CMD_RECONFIGURE)
    finally:
        os.close(fd)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(dfd: int, path: str, flags: int, attr_set: int = 0, attr_clr: int = 0,
                  propagation: int = 0) -> None:
    """mount_setattr(2): change per-mount flags and/or propagation."""
    key = (attr_set, attr_clr, propagation)
    attr = _mount_attrs.get(key)
    if attr is None:
        attr = _mount_attrs[key] = ctypes.byref(_MountAttr(attr_set, attr_clr, propagation, 0))
    if _syscall(NR["mount_setattr"], dfd, b"" if path == "" else _b(path),
                flags if flags < 0x80000000 else _uint(flags), attr, _MOUNT_ATTR_SIZE) < 0:
        _failed(f"mount_setattr({path!r})")


_MOUNT_ATTR_SIZE = ctypes.c_size_t(ctypes.sizeof(_MountAttr))
# (set, clr, propagation) -> a reference to its struct (byref keeps the struct alive)
_mount_attrs: dict[tuple, object] = {}


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2)."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           lambda: f"mount({source!r}, {target!r}, {fstype!r})")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), lambda: f"umount2({target!r})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2)."""
    _check(_syscall(NR["pivot_root"], _b(new_root), _b(put_old)), lambda: f"pivot_root({new_root!r}, {put_old!r})")


def domainname() -> str:
    """The NIS domain name of our UTS namespace (getdomainname(2)); "(none)" when never set."""
    buf = ctypes.create_string_buffer(65)
    _check(_libc.getdomainname(buf, ctypes.c_size_t(64)), "getdomainname")
    return buf.value.decode("utf-8", "surrogateescape")


def set_uts_names(hostname: str, domain: str | None) -> None:
    """sethostname(2), and setdomainname(2) when `domain` is given."""
    import _socket   # (not socket.py: its enum classes cost a stand-in ~7 ms, engine/channel.py)
    _socket.sethostname(hostname)
    if domain is not None:
        raw = domain.encode("utf-8", "surrogateescape")
        _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2). Entering a mount namespace needs a single-threaded caller."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def unshare(flags: int) -> None:
    """unshare(2)."""
    _check(_libc.unshare(ctypes.c_int(flags)), lambda: f"unshare({flags:#x})")


class _Statx(ctypes.Structure):
    # Only the fields we read; the buffer is the full 256-byte struct statx.
    _fields_ = [("buf", ctypes.c_uint8 * 256)]


STATX_TYPE = 0x1


def _statx_mnt(path: str, dfd: int, flags: int, unique: bool) -> bytes:
    buf = _Statx()
    mask = STATX_MNT_ID_UNIQUE if unique else STATX_MNT_ID
    _check(_syscall(NR["statx"], ctypes.c_int(dfd), _b(path), ctypes.c_int(flags), ctypes.c_uint(mask | STATX_TYPE),
                    ctypes.byref(buf)), lambda: f"statx({path!r})")
    raw = bytes(buf.buf)
    got_mask = struct.unpack_from("<I", raw, 0)[0]
    if not got_mask & mask:
        raise OSError(errno.ENOSYS, f"statx({path!r}): kernel did not return {'STATX_MNT_ID_UNIQUE' if unique else 'STATX_MNT_ID'}")
    return raw


def statx_attributes(path: str, dfd: int = AT_FDCWD, flags: int = 0) -> tuple[int, int, int, int]:
    """(stx_attributes, stx_attributes_mask, st_mode, device as makedev) of `path` in one call."""
    buf = _Statx()
    _check(_syscall(NR["statx"], ctypes.c_int(dfd), _b(path), ctypes.c_int(flags), ctypes.c_uint(STATX_TYPE),
                    ctypes.byref(buf)), lambda: f"statx({path!r})")
    raw = bytes(buf.buf)
    major, minor = struct.unpack_from("<II", raw, 0x88)
    return (struct.unpack_from("<Q", raw, 0x08)[0], struct.unpack_from("<Q", raw, 0x38)[0],
            struct.unpack_from("<H", raw, 0x1c)[0], os.makedev(major, minor))


AT_STATX_DONT_SYNC = 0x4000


def stat_cached(path: str) -> tuple[int, int]:
    """(st_dev, st_rdev) of `path` from what the kernel has cached (statx AT_STATX_DONT_SYNC): a FUSE
    or network filesystem is not asked, so a stopped daemon or a gone server cannot make it wait."""
    buf = _Statx()
    _check(_syscall(NR["statx"], ctypes.c_int(AT_FDCWD), _b(path), ctypes.c_int(AT_STATX_DONT_SYNC),
                    ctypes.c_uint(0), ctypes.byref(buf)), lambda: f"statx({path!r})")
    rmaj, rmin, dmaj, dmin = struct.unpack_from("<IIII", bytes(buf.buf), 0x80)
    return os.makedev(dmaj, dmin), os.makedev(rmaj, rmin)


def statx_mnt_id(path: str, dfd: int = AT_FDCWD, flags: int = 0, unique: bool = False) -> int:
    """The mount id of `path` (of fd `dfd` with AT_EMPTY_PATH), old-style or 64-bit unique."""
    return struct.unpack_from("<Q", _statx_mnt(path, dfd, flags, unique), 0x90)[0]


def statx_mnt_id_mode(path: str, dfd: int = AT_FDCWD, flags: int = 0) -> tuple[int, int]:
    """(mount id, st_mode) of `path` in one call."""
    raw = _statx_mnt(path, dfd, flags, False)
    return struct.unpack_from("<Q", raw, 0x90)[0], struct.unpack_from("<H", raw, 0x1c)[0]


def statx_mnt_id_owner(path: str, dfd: int = AT_FDCWD, flags: int = 0) -> tuple[int, int, int, int]:
    """(mount id, st_mode, uid, gid) of `path` in one call."""
    raw = _statx_mnt(path, dfd, flags, False)
    uid, gid, mode = struct.unpack_from("<IIH", raw, 0x14)
    return struct.unpack_from("<Q", raw, 0x90)[0], mode, uid, gid


# --- statmount / listmount ---------------------------------------------------

def _mnt_id_req(mnt_id: int, param: int, ns_id: int = 0) -> bytes:
    # struct mnt_id_req { u32 size; u32 mnt_ns_fd; u64 mnt_id; u64 param; u64 mnt_ns_id; }
    return struct.pack("<IIQQQ", MNT_ID_REQ_SIZE_VER1, 0, mnt_id, param, ns_id)


def listmount(ns_id: int = 0, start: int = 0, batch: int = 4096) -> list[int]:
    """All unique mount ids of a mount namespace (the caller's when ns_id is 0)."""
    ids: list[int] = []
    last = start
    arr = (ctypes.c_uint64 * batch)()
    while True:
        req = _mnt_id_req(LSMT_ROOT, last, ns_id)
        n = _check(_syscall(NR["listmount"], req, arr, ctypes.c_size_t(batch), ctypes.c_uint(0)), "listmount")
        ids.extend(arr[:n])
        if n < batch:
            return ids
        last = ids[-1]


STATMOUNT_ALL = (STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_PROPAGATE_FROM | STATMOUNT_MNT_ROOT
                 | STATMOUNT_MNT_POINT | STATMOUNT_FS_TYPE | STATMOUNT_MNT_NS_ID | STATMOUNT_MNT_OPTS
                 | STATMOUNT_FS_SUBTYPE | STATMOUNT_SB_SOURCE)


def statmount(mnt_id: int, mask: int = STATMOUNT_ALL, ns_id: int = 0) -> dict:
    """statmount(2) of a unique mount id, decoded into a dict (strings are None when not returned)."""
    return _statmount(_mnt_id_req(mnt_id, mask, ns_id), 0, f"statmount({mnt_id})")


def statmount_fd(fd: int, mask: int = STATMOUNT_ALL) -> dict:
    """statmount(2) of the mount fd `fd` lies on (STATMOUNT_BY_FD), as `statmount` decodes it: also
    a mount in no namespace (lazily unmounted), whose options nothing else shows. Kernels without
    it (6.18 and older) say EINVAL, without statmount (before 6.8) ENOSYS."""
    req = struct.pack("<IIQQQ", MNT_ID_REQ_SIZE_VER1, fd, 0, mask, 0)
    return _statmount(req, STATMOUNT_BY_FD, f"statmount(fd {fd})")


def _statmount(req: bytes, flags: int, what: str) -> dict:
    size = 4096
    while True:
        buf = ctypes.create_string_buffer(size)
        ret = _syscall(NR["statmount"], req, buf, ctypes.c_size_t(size), ctypes.c_uint(flags))
        if ret < 0:
            err = ctypes.get_errno()
            if err == errno.EOVERFLOW and size < (1 << 24):
                size *= 4
                continue
            raise OSError(err, f"{what}: {os.strerror(err)}")
        break
    raw = buf.raw
    (total, o_mnt_opts, got, sb_major, sb_minor, sb_magic, sb_flags, o_fs_type, uid, upid, old_id, old_pid,
     attr, prop, peer, master, pfrom, o_root, o_point, ns, o_subtype, o_source) = struct.unpack_from(
        "<IIQIIQIIQQIIQQQQQIIQII", raw, 0)

    def s(off: int, bit: int) -> str | None:
        if not got & bit:
            return None
        end = raw.index(b"\0", 512 + off)
        return raw[512 + off:end].decode(errors="surrogateescape")

    return dict(
        mask=got, sb_major=sb_major, sb_minor=sb_minor, sb_magic=sb_magic, sb_flags=sb_flags,
        mnt_id=uid, parent_id=upid, mnt_id_old=old_id, parent_id_old=old_pid, mnt_attr=attr,
        propagation=prop, peer_group=peer, master=master, propagate_from=pfrom, ns_id=ns,
        mnt_opts=s(o_mnt_opts, STATMOUNT_MNT_OPTS), fs_type=s(o_fs_type, STATMOUNT_FS_TYPE),
        mnt_root=s(o_root, STATMOUNT_MNT_ROOT), mnt_point=s(o_point, STATMOUNT_MNT_POINT),
        fs_subtype=s(o_subtype, STATMOUNT_FS_SUBTYPE), sb_source=s(o_source, STATMOUNT_SB_SOURCE),
    )

def unique_ids(ns_id: int = 0) -> dict[int, int]:
    """{old 32-bit mount id: 64-bit unique id} of every mount of a mount namespace (the caller's when
    ns_id is 0), through listmount and statmount with only STATMOUNT_MNT_BASIC (Linux >= 6.8).

    The hot loop of a dump of a large tree: one request and one small reply buffer are reused (a
    reply without strings is the 512-byte header), and only the two ids are decoded. Measured at
    10,000 mounts: a third of what full statmount records cost. A mount gone between listmount
    and statmount is skipped."""
    out: dict[int, int] = {}
    req = bytearray(_mnt_id_req(0, STATMOUNT_MNT_BASIC, ns_id))
    creq = (ctypes.c_char * len(req)).from_buffer(req)
    buf = ctypes.create_string_buffer(512)
    size, flags, nr = ctypes.c_size_t(512), ctypes.c_uint(0), NR["statmount"]
    for uid in listmount(ns_id=ns_id):
        struct.pack_into("<Q", req, 8, uid)
        if _syscall(nr, creq, buf, size, flags) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                continue
            raise OSError(err, f"statmount({uid}): {os.strerror(err)}")
        mnt_id, old = struct.unpack_from("<Q8xI", buf, 40)
        out[old] = mnt_id
    return out


# --- file handles --------------------------------------------------------------

MAX_HANDLE_SZ = 128


def name_to_handle_at(dfd: int, path: str, flags: int = 0) -> tuple[int, bytes, int]:
    """name_to_handle_at(2): (handle_type, handle bytes, mount id)."""
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    struct.pack_into("<I", buf, 0, MAX_HANDLE_SZ)
    mnt = ctypes.c_int(0)
    _check(_syscall(NR["name_to_handle_at"], ctypes.c_int(dfd), _b(path), buf, ctypes.byref(mnt), ctypes.c_int(flags)),
           lambda: f"name_to_handle_at({path!r})")
    nbytes, htype = struct.unpack_from("<Ii", buf.raw, 0)
    return htype, buf.raw[8:8 + nbytes], mnt.value


def open_by_handle_at(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at(2)."""
    buf = ctypes.create_string_buffer(struct.pack("<Ii", len(handle), handle_type) + handle)
    return _check(_syscall(NR["open_by_handle_at"], ctypes.c_int(mount_fd), buf, ctypes.c_int(flags | os.O_CLOEXEC)),
                  "open_by_handle_at")


# --- openat2 -----------------------------------------------------------------------

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
NR["openat2"] = 437


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open `path` beneath `dfd` under the RESOLVE_* restrictions."""
    key = (flags, mode, resolve)
    how = _open_hows.get(key)
    if how is None:
        how = ctypes.byref(_OpenHow(flags | os.O_CLOEXEC, mode, resolve))
        if len(_open_hows) < 256:   # (modes vary with O_CREAT: the usual few are kept)
            _open_hows[key] = how
    fd = _syscall(NR["openat2"], dfd, _b(path), how, _OPEN_HOW_SIZE)
    if fd < 0:
        _failed(f"openat2({path!r})")
    return fd


_OPEN_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))
_open_hows: dict[tuple, object] = {}   # (flags, mode, resolve) -> the struct, passed by reference


def open_unblocked(opener, flags: int) -> int:
    """opener(flags) with O_NONBLOCK for the open alone (then cleared, unless `flags` ask for it):
    an image's FIFO (no writer) or a device waiting for carrier never blocks restore. O_PATH
    opens never block."""
    import fcntl
    if flags & (os.O_PATH | os.O_NONBLOCK):
        return opener(flags)
    fd = opener(flags | os.O_NONBLOCK)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


PR_SET_PDEATHSIG = 1


def ns_ino(pid, kind: str = "mnt") -> int | None:
    """The inode of `pid`'s (a number or "self") namespace of `kind`; None when it has none (gone,
    or a zombie: its /proc/PID/ns links are gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except FileNotFoundError:
        return None
    except PermissionError:
        from engine import procstat
        if procstat.dead(pid):   # (a process on its way out: its links refuse even root)
            return None
        raise


def ns_outsider(kind: str, ino: int, tree) -> int | None:
    """A process outside `tree` (pids) in the namespace of `kind` whose inode is `ino`, or None."""
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(proc):
            if not name.isdigit() or int(name) in tree:
                continue
            try:
                if os.stat(f"{name}/ns/{kind}", dir_fd=proc).st_ino == ino:
                    return int(name)
            except OSError:
                continue
        return None
    finally:
        os.close(proc)


def drop_ctty() -> None:
    """Leave our controlling terminal, if we have one and do not lead our session (TIOCNOTTY: our
    session and process group keep it, Ctrl-C still reaches us): an open of a tty node (5:0) by us,
    or by a child made after, then fails (ENXIO) instead of giving the terminal we were started from."""
    if os.getsid(0) == os.getpid():
        return   # (a leader's TIOCNOTTY would hang its whole session up)
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return   # (none)
    import fcntl
    import termios   # (only then: an extension module to load, ~0.3 ms)
    try:
        fcntl.ioctl(fd, termios.TIOCNOTTY)
    finally:
        os.close(fd)


def set_comm(name: str) -> None:
    """prctl(PR_SET_NAME): this thread's name (/proc/PID/comm; the kernel keeps 15 bytes)."""
    _check(_libc.prctl(ctypes.c_int(15), ctypes.c_char_p(name.encode("utf-8", "surrogateescape")[:15]), 0, 0, 0),
           "prctl(PR_SET_NAME)")


def fd_links(pids):
    """(pid, /proc path of the fd, its link target) of every fd of processes `pids`, read now; a
    process or fd gone meanwhile is passed over (not the rest of its process's)."""
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for n in names:
            path = f"/proc/{pid}/fd/{n}"
            try:
                yield pid, path, os.readlink(path)
            except OSError:
                continue


def fd_stats(pid: int):
    """(fd number, stat of what it is open on) of every fd of process `pid`, read now; none once the
    process is gone, and an fd closed meanwhile is passed over."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for n in names:
        try:
            yield int(n), os.stat(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue


def read_comm(pid: int) -> str:
    """/proc/PID/comm without its newline (bytes a UTF-8 decode cannot take kept as surrogates)."""
    with open(f"/proc/{pid}/comm", "rb") as f:
        data = f.read()
    # Only the newline the kernel adds: a name may end with its own.
    return (data[:-1] if data.endswith(b"\n") else data).decode("utf-8", "surrogateescape")


def comm_shown(pid) -> str:
    """/proc/PID/comm as a message shows it (bytes no UTF-8 decode takes escaped), "?" once it is gone."""
    try:
        return read_comm(pid).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except OSError:
        return "?"


def dumpable() -> bool:
    """prctl(PR_GET_DUMPABLE): whether the process is dumpable."""
    return _check(_libc.prctl(ctypes.c_int(3), 0, 0, 0, 0), "prctl(PR_GET_DUMPABLE)") == 1


def set_dumpable(on: bool) -> None:
    """prctl(PR_SET_DUMPABLE): whether the process is dumpable (changing ids clears it)."""
    _check(_libc.prctl(ctypes.c_int(4), ctypes.c_ulong(1 if on else 0), 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def set_pdeathsig(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): get `sig` when the parent thread exits (0 clears it)."""
    _check(_libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig), 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
OVERLAYFS_MAGIC = 0x794C7630


def fstatfs_type(fd: int) -> int:
    """f_type (the filesystem magic) of the filesystem behind fd."""
    buf = _Statfs()
    _check(_libc.fstatfs(ctypes.c_int(fd), ctypes.byref(buf)), "fstatfs")
    return buf.f_type & 0xFFFFFFFF


# statvfs f_flag bits -> mountinfo per-mount option names
ST_FLAGS = {1: "ro", 2: "nosuid", 4: "nodev", 8: "noexec", 1024: "noatime", 2048: "nodiratime",
            4096: "relatime", 8192: "nosymfollow"}


def mount_opts_of_fd(fd: int) -> list[str]:
    """Per-mount options of the mount behind fd, in mountinfo's order (from fstatvfs)."""
    flags = os.fstatvfs(fd).f_flag
    opts = ["ro" if flags & 1 else "rw"]
    opts += [name for bit, name in ST_FLAGS.items() if bit != 1 and flags & bit]
    return opts


NR["pidfd_open"] = 434


def pidfd_open(pid: int) -> int:
    """pidfd_open(2): an fd that becomes readable when process `pid` exits."""
    return _check(_syscall(NR["pidfd_open"], ctypes.c_int(pid), ctypes.c_uint(0)), lambda: f"pidfd_open({pid})")


def exited(pidfd: int) -> bool:
    """True when the process behind `pidfd` has exited (non-blocking)."""
    import select
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def die_with_parent(parent_pidfd: int, sig: int) -> None:
    """In a fresh child: get `sig` when the parent dies, and exit now if it already has.

    PR_SET_PDEATHSIG set after fork misses a parent that died in between; the
    parent's pidfd (opened before fork) closes that gap.
    """
    set_pdeathsig(sig)
    if exited(parent_pidfd):
        os._exit(1)


# Capabilities a file-writing helper (tar) keeps when it runs as another id: chown, dac_override,
# dac_read_search, fowner, fsetid, mknod, setfcap, sys_admin (trusted.* xattrs).
FILE_CAPS = (0, 1, 2, 3, 4, 27, 31, 21)
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 47, 2


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def become_ids_keeping_caps(uid: int, gid: int, caps=FILE_CAPS) -> None:
    """In a root child about to exec: take ids `uid`/`gid` (real, effective, saved, hence fs), and
    make `caps` ambient so the executed program keeps them. A superblock owned by a user namespace
    takes new files only from fs ids it maps.

    All three ids change, not the effective one alone: an exec whose new effective id differs from
    the old real one counts as set-user-id and clears the ambient set on older kernels, 6.1 among them, not 6.18 (tar
    then lost CAP_CHOWN and failed to give a userns-owned tmpfs's files their owners in a 6.1 VM,
    userns/full_map). SECBIT_NO_SETUID_FIXUP keeps the capabilities through the change of ids."""
    head, data = _cap_buffers()
    _check(_libc.capget(ctypes.byref(head), data), "capget")
    for c in caps:
        data[c // 32].inheritable |= 1 << (c % 32)
    _check(_libc.capset(ctypes.byref(head), data), "capset")
    for c in caps:
        _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, c, 0, 0), f"prctl(PR_CAP_AMBIENT_RAISE, {c})")
    _check(_libc.prctl(28, 0x4, 0, 0, 0), "prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP)")
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


CAP_SETS = ("inh", "prm", "eff", "bnd", "amb")   # /proc/PID/status CapInh, CapPrm, CapEff, CapBnd, CapAmb


def check_own_proc() -> None:
    """OSError (one line) unless /proc is this process's pid namespace's: a proc of another one
    (`unshare -p -f` without --mount-proc) names other processes by our pids, so dump and restore
    would read, stop or signal the wrong ones."""
    try:
        seen = os.readlink("/proc/self")
    except OSError as e:
        raise OSError(e.errno, f"/proc cannot be read ({e.strerror}): mount a proc of this pid namespace on /proc") from None
    if seen != str(os.getpid()):
        raise OSError(errno.EINVAL, f"/proc is not this pid namespace's proc (it shows this process as {seen or 'nobody'}, "
                                    f"its pid is {os.getpid()}): run in a mount namespace of your own with this pid "
                                    "namespace's proc on /proc (unshare --fork --pid --mount-proc)")


def check_host_root(verb: str) -> None:
    """OSError (one line) unless this process holds CAP_SYS_ADMIN in the initial user namespace:
    `verb` mounts, makes namespaces and devices of the host's. In a user namespace (`unshare -Ur`,
    an unprivileged container) the kernel refuses some of those steps with EINVAL or EPERM, which
    the feature probe would report as a kernel lacking them."""
    with open("/proc/self/uid_map") as f:
        initial = f.read().split() == ["0", "0", "4294967295"]
    admin = int(proc_status("self", {"CapEff"}).get("CapEff", "0"), 16) >> 21 & 1
    if initial and admin:
        return
    where = "in the initial user namespace" if initial else "in a user namespace (a rootless one's root is not the host's)"
    raise OSError(errno.EPERM, f"{verb} needs root of the host (CAP_SYS_ADMIN in the initial user namespace); this "
                               f"process is uid {os.getuid()} {where}{'' if admin else ' without CAP_SYS_ADMIN'}: "
                               f"run mntcr {verb} as root (sudo), outside any user namespace (the host's root dumps and "
                               "restores a rootless tree's user namespaces as they are)")


def proc_status(pid, keys) -> dict[str, str]:
    """The values of lines `keys` ("Uid", "CapEff", ...) of /proc/PID/status, where present."""
    out = {}
    # (one os.read: a file object costs 4 syscalls more, and this is read ~7 times a process a dump)
    fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    # Each key looked up where its line starts (a loop over the ~60 lines was ~500 interpreter steps
    # a read): the kernel escapes newlines in Name:, so "\nKey:" starts a line; a line the read cut
    # short (no newline after it) is left out; the lines in the file's order.
    text = "\n" + data.decode(errors="surrogateescape")   # (its Name: may be any bytes)
    found = []
    for key in keys:
        at = text.find(f"\n{key}:")
        end = text.find("\n", at + 1) if at >= 0 else -1
        if end >= 0:
            found.append((at, key, text[at + len(key) + 2:end + 1]))
    for _, key, value in sorted(found):
        out[key] = value
    return out


# Capability names by bit (linux/capability.h), as capsh and setpriv spell them.
CAP_NAMES = ("chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
             "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
             "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
             "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control",
             "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
             "perfmon", "bpf", "checkpoint_restore")


def cap_names(mask: int) -> list[str]:
    """The capabilities of bit mask `mask` by name (cap_sys_nice...; an unnamed bit as cap_N)."""
    return [f"cap_{CAP_NAMES[b]}" if b < len(CAP_NAMES) else f"cap_{b}" for b in range(mask.bit_length()) if mask >> b & 1]


_CAP_KEYS = tuple("Cap" + s.capitalize() for s in CAP_SETS)
# The /proc/PID/status lines dump reads of every stopped process (read_caps, read_fs_bits,
# read_ignored_signals, read_blocked_signals, thp.read, seccomp.read, timersigs.caught):
# read_process_status reads them at once.
PROCESS_KEYS = (*_CAP_KEYS, "Umask", "NoNewPrivs", "SigIgn", "SigBlk", "SigCgt", "Seccomp", "THP_enabled")


def read_process_status(pid: int) -> dict[str, str]:
    """PROCESS_KEYS' lines of /proc/PID/status in one read, for the read_* functions' `got`: one read
    of a stopped process instead of one each (8 a process a dump)."""
    return proc_status(pid, PROCESS_KEYS)


def read_caps(pid: int, got: dict[str, str] | None = None) -> dict[str, int]:
    """The capability sets of `pid` (inheritable, permitted, effective, bounding, ambient), as bit masks;
    from `got` (read_process_status's) when given."""
    got = proc_status(pid, _CAP_KEYS) if got is None else got
    return {k[3:].lower(): int(got[k], 16) for k in _CAP_KEYS if k in got}   # (the file's order)


def read_fs_bits(pid: int, got: dict[str, str] | None = None) -> dict:
    """{"umask": its umask, "no_new_privs": True when set} of `pid` (/proc/PID/status; `got`: as read_caps)."""
    got = proc_status(pid, {"Umask", "NoNewPrivs"}) if got is None else got
    out = {"umask": int(got["Umask"], 8)} if "Umask" in got else {}
    if got.get("NoNewPrivs", "").strip() == "1":
        out["no_new_privs"] = True
    return out


def read_ignored_signals(pid: int, got: dict[str, str] | None = None) -> dict:
    """{"sig_ignored": mask} of `pid` (/proc/PID/status SigIgn; bit n-1 is signal n), when not empty
    (`got`: as read_caps)."""
    got = proc_status(pid, {"SigIgn"}) if got is None else got
    mask = int(got["SigIgn"], 16) if "SigIgn" in got else 0
    return {"sig_ignored": mask} if mask else {}


def read_blocked_signals(pid: int, got: dict[str, str] | None = None) -> dict:
    """{"sig_blocked": mask} of `pid`'s main thread (/proc/PID/status SigBlk), when not empty: what
    tini, dumb-init and catatonit block for good (they take signals by sigtimedwait or a
    signalfd), so that a stand-in without it would die of a SIGTERM they hold pending. Read with
    the tree stopped: the stop ended a sigtimedwait, which blocks less while it waits. (A process
    in sigsuspend, ppoll or pselect shows the mask of its wait until it returns: that one is
    kept, as a moment's mask of a shell forking a job would be.) `got`: as read_caps."""
    got = proc_status(pid, {"SigBlk"}) if got is None else got
    mask = int(got["SigBlk"], 16) if "SigBlk" in got else 0
    return {"sig_blocked": mask} if mask else {}


def take_blocked_signals(blocked: int) -> None:
    """Block exactly the signals whose bit is set in `blocked` (SIGKILL and SIGSTOP never are), the
    C library's own 32 and 33 too: by the raw rt_sigprocmask, as glibc's leaves them out (a mask
    with them came back without them; the stand-in makes no setxid call once it has threads)."""
    mask = blocked & ~(1 << 8 | 1 << 18) & (1 << 64) - 1
    syscall("rt_sigprocmask", ctypes.c_int(2), struct.pack("=Q", mask), None, ctypes.c_size_t(8))   # SIG_SETMASK


def take_ignored_signals(ignored: int) -> None:
    """Every signal ignored whose bit is set in `ignored`, any other back to its default action: no
    handler of ours stays, and Python ignores SIGPIPE and SIGXFSZ, which the process may not have."""
    import _signal as signal
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_IGN if ignored >> (sig - 1) & 1 else signal.SIG_DFL)
        except (OSError, ValueError):
            # The C library's own, 32 and 33, which its sigaction() refuses to touch: processes a
            # program forked while ignoring every signal (make's jobs) ignore them too.
            if ignored >> (sig - 1) & 1:
                _ignore_raw(sig)


def _ignore_raw(sig: int) -> None:
    """Ignore signal `sig` with the raw rt_sigaction (struct k_sigaction: handler, flags, restorer,
    mask); the stand-in runs no C library code that would wait for its handler of it afterwards."""
    act = struct.pack("=QQQQ", 1, 0, 0, 0)   # SIG_IGN
    syscall("rt_sigaction", ctypes.c_int(sig), act, None, ctypes.c_size_t(8))


# (their numbers in the kernel's order; engine/image.py RLIMITS names the same)
_RLIMIT_NR = {name: i for i, name in enumerate(("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE",
                                                "MEMLOCK", "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO",
                                                "RTTIME"))}


def read_rlimits(pid) -> dict[str, list[int]]:
    """{NAME: [soft, hard]} of every resource limit of `pid` (-1: unlimited), from /proc/PID/limits
    (prlimit(2) would need CAP_SYS_RESOURCE for another user's process). Its rows come in the
    kernel's order, the columns where its header puts them."""
    with open(f"/proc/{pid}/limits") as f:
        head, *rows = f.read().splitlines()
    soft_at, hard_at, units_at = head.index("Soft Limit"), head.index("Hard Limit"), head.index("Units")
    names = sorted(_RLIMIT_NR, key=_RLIMIT_NR.get)
    value = lambda s: -1 if s.strip() == "unlimited" else int(s)   # noqa: E731
    return {name: [value(row[soft_at:hard_at]), value(row[hard_at:units_at])] for name, row in zip(names, rows)}


def raise_hard_limits(wanted) -> None:
    """Raise our hard resource limits to the highest of `wanted` ({NAME: [soft, hard]} each, -1:
    unlimited), where they are lower, for the stand-ins to inherit: one that then sets its own
    (`set_rlimits`) only lowers its hard limits, which needs no capability, also inside a user
    namespace (raising there would need CAP_SYS_RESOURCE of the initial one: podman's 1048576
    files). Where we may not raise one (no CAP_SYS_RESOURCE, above fs.nr_open), it stays: the
    stand-in that needs it fails with its line."""
    import resource
    rank = lambda v: float("inf") if v == resource.RLIM_INFINITY else v   # noqa: E731  (-1: unlimited)
    top: dict[str, int] = {}
    for limits in wanted:
        for name, (_, hard) in limits.items():
            if name in _RLIMIT_NR and rank(hard) > rank(top.get(name, 0)):
                top[name] = hard
    for name, hard in sorted(top.items()):
        soft, have = resource.getrlimit(_RLIMIT_NR[name])
        if rank(hard) > rank(have):
            try:
                resource.setrlimit(_RLIMIT_NR[name], (soft, hard))
            except (OSError, ValueError):
                pass   # (see above: told by the stand-in that needs it)


def set_rlimits(limits: dict[str, list[int]]) -> None:
    """setrlimit(2) each of `limits` ({NAME: [soft, hard]}) on ourselves: lowering always works,
    raising a hard limit needs CAP_SYS_RESOURCE."""
    import resource
    for name, (soft, hard) in sorted(limits.items()):
        try:
            resource.setrlimit(_RLIMIT_NR[name], (soft, hard))
        except (OSError, ValueError) as e:
            have = resource.getrlimit(_RLIMIT_NR[name])
            raise OSError(getattr(e, "errno", None) or errno.EINVAL,
                          f"its resource limit {name} ({soft}, {hard}; the restorer's {have[0]}, {have[1]}): "
                          f"{getattr(e, 'strerror', None) or e} (a hard limit above the restorer's needs "
                          "CAP_SYS_RESOURCE)") from None


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): never undone, inherited by every thread made after."""
    _check(_libc.prctl(38, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl(PR_SET_NO_NEW_PRIVS)")


def raise_effective(cap: int) -> None:
    """Raise capability `cap` in the calling thread's effective set (it must be in its permitted one:
    a thread that took a nonzero effective uid keeps its permitted set while its real uid is 0)."""
    head, data = _cap_buffers()
    _check(_libc.capget(ctypes.byref(head), data), "capget")
    data[cap // 32].effective |= 1 << (cap % 32)
    _check(_libc.capset(ctypes.byref(head), data), "capset")


def _cap_buffers():
    """A capget/capset header (_LINUX_CAPABILITY_VERSION_3, this process) and its two data words."""
    return _CapHeader(0x20080522, 0), (_CapData * 2)()


def cap_data(caps: dict[str, int]):
    """(header, data) for capset(2) setting `caps`' inheritable, permitted and effective sets."""
    head, data = _cap_buffers()
    for i in (0, 1):
        data[i].effective, data[i].permitted, data[i].inheritable = \
            ((caps[k] >> (32 * i)) & 0xFFFFFFFF for k in ("eff", "prm", "inh"))
    return head, data


def drop_bounding(keep: int) -> None:
    """Drop from the bounding set every capability not in mask `keep` (needs CAP_SETPCAP)."""
    c = 0
    while c < 64 and _libc.prctl(23, c, 0, 0, 0) >= 0:   # PR_CAPBSET_READ: EINVAL past the last one
        if not keep >> c & 1:
            _check(_libc.prctl(24, c, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {c})")
        c += 1


def caps_before_bounding(caps: dict[str, int]) -> None:
    """Before `drop_bounding`: the effective set back to the permitted one (taking other ids
    emptied it; the permitted one was kept), and `caps`' inheritable set while the bounding set
    still allows it (capset takes an inheritable capability only from the old inheritable or
    bounding set)."""
    head, data = _cap_buffers()
    _check(_libc.capget(ctypes.byref(head), data), "capget")
    for i in (0, 1):
        data[i].effective = data[i].permitted
        data[i].inheritable = (caps["inh"] >> (32 * i)) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(head), data), "capset")


def take_caps(caps: dict[str, int]) -> None:
    """Make the inheritable, permitted and effective sets `caps`' (only ever fewer than now), then
    raise its ambient ones."""
    head, data = cap_data(caps)
    _check(_libc.capset(ctypes.byref(head), data), "capset")
    for c in range(64):
        if caps["amb"] >> c & 1:
            _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, c, 0, 0), f"prctl(PR_CAP_AMBIENT_RAISE, {c})")
    set_keep_caps(False)   # (userns_cr.become may have set it)


def close_fds_except(keep) -> None:
    """Close every fd of this process but those in `keep` (up to 2^20, the fd limit's ceiling)."""
    low = 0
    for n in sorted(set(keep)) + [1 << 20]:
        if n > low:
            os.closerange(low, n)
        low = n + 1


def set_keep_caps(on: bool) -> None:
    """prctl(PR_SET_KEEPCAPS): whether leaving root keeps the permitted set."""
    _check(_libc.prctl(ctypes.c_int(8), ctypes.c_ulong(1 if on else 0), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


class fs_ids_for_a_while:
    """``with fs_ids_for_a_while(uid, gid):`` files made by this thread meanwhile are uid's and gid's
    (a superblock a user namespace owns takes new files only from ids it maps), keeping root's
    capabilities; afterwards root's file system ids and the securebits come back (a process forked
    later, a stand-in taking its ids, must lose its capabilities as usual)."""

    def __init__(self, uid: int, gid: int):
        self.ids = (uid, gid)

    def __enter__(self):
        self.bits = _libc.prctl(27, 0, 0, 0, 0)   # PR_GET_SECUREBITS
        _check(self.bits, "prctl(PR_GET_SECUREBITS)")
        self.old = (_libc.setfsuid(-1), _libc.setfsgid(-1))   # (-1: no change, the current one back)
        fs_ids_keeping_caps(*self.ids)
        return self

    def __exit__(self, *exc):
        _libc.setfsuid(self.old[0])
        _libc.setfsgid(self.old[1])
        _check(_libc.prctl(28, self.bits, 0, 0, 0), "prctl(PR_SET_SECUREBITS)")
        return False


class as_user_for_a_while:
    """``with as_user_for_a_while(uid, gid, groups):`` this thread's file system ids and groups are
    uid's, gid's and `groups` (raw setgroups: this thread alone), without root's capabilities over
    files (a file system uid other than 0 drops them, SECBIT_NO_SETUID_FIXUP cleared meanwhile): an
    open checks the permissions that user would meet. Afterwards root's ids, groups, capabilities and
    securebits come back."""

    def __init__(self, uid: int, gid: int, groups: list[int]):
        self.ids, self.groups = (uid, gid), groups

    def __enter__(self):
        self.bits = _check(_libc.prctl(27, 0, 0, 0, 0), "prctl(PR_GET_SECUREBITS)")
        self.old_groups = os.getgroups()
        self.old = (_libc.setfsuid(-1), _libc.setfsgid(-1))
        if self.bits & 0x4:
            _check(_libc.prctl(28, self.bits & ~0x4, 0, 0, 0), "prctl(PR_SET_SECUREBITS)")
        try:
            arr = (ctypes.c_uint * max(1, len(self.groups)))(*self.groups)
            syscall("setgroups", len(self.groups), arr)
            set_fs_ids(*self.ids)
        except OSError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        _libc.setfsuid(self.old[0])
        _libc.setfsgid(self.old[1])
        arr = (ctypes.c_uint * max(1, len(self.old_groups)))(*self.old_groups)
        syscall("setgroups", len(self.old_groups), arr)
        _check(_libc.prctl(28, self.bits, 0, 0, 0), "prctl(PR_SET_SECUREBITS)")
        return False


def set_fs_ids(uid: int | None = None, gid: int | None = None) -> None:
    """setfsuid/setfsgid, asked again (the kernel answers with the old id whether it took or not):
    OSError(EPERM) when one did not take."""
    for name, call, want in (("setfsgid", _libc.setfsgid, gid), ("setfsuid", _libc.setfsuid, uid)):
        if want is not None:
            call(want)
            kept = call(-1) & 0xFFFFFFFF
            if kept != want:
                raise OSError(errno.EPERM, f"{name}({want}) did not take: the id stayed {kept}")


def fs_ids_keeping_caps(uid: int, gid: int) -> None:
    """In a root child: file system ids `uid`/`gid` (new files are theirs, and a superblock a user
    namespace owns takes them only from ids it maps), keeping root's capabilities
    (SECBIT_NO_SETUID_FIXUP: the kernel would drop the file capabilities otherwise)."""
    _check(_libc.prctl(28, 0x4, 0, 0, 0), "prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP)")
    set_fs_ids(uid, gid)   # (checked there, ids above 2^31 too: setfs*id answers a signed int)


class _CloneArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
                                               "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]


def hold_pid(pidns: int, pid: int, proc: int, fn):
    """fn() while a child of ours has number `pid` in pid namespace `pidns` (an fd), made by clone3
    with set_tid; the child exits and is reaped right after, so what fn() opened of /proc/PID/ is
    a file of a process that is gone (CRIU's remap_dead_pid). `proc`: an fd on the host's /proc.
    EEXIST when that number is taken there."""
    import _signal as signal
    back = os.open("self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    r, w = os.pipe()
    try:
        setns(pidns, CLONE_NEWPID)
        try:
            tid = (ctypes.c_int * 1)(pid)
            args = _CloneArgs(exit_signal=signal.SIGCHLD, set_tid=ctypes.addressof(tid), set_tid_size=1)
            # (PyDLL keeps the GIL across the call: the child must not wait for another thread's)
            clone3 = ctypes.PyDLL(None, use_errno=True).syscall
            clone3.restype = ctypes.c_long
            child = clone3(ctypes.c_long(435), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
            if child == 0:
                os.close(w)
                os.read(r, 1)
                os._exit(0)
        finally:
            setns(back, CLONE_NEWPID)
        if child < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"clone3 with pid {pid}: {os.strerror(e)}")
        try:
            return fn()
        finally:
            os.close(w)
            w = -1
            os.waitpid(child, 0)
    finally:
        os.close(back)
        os.close(r)
        if w >= 0:
            os.close(w)
