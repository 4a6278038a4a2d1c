"""File mappings and the executable of a process: which files on which mounts it maps.

Dump lists /proc/PID/map_files inside the process's mount namespace (paths as
the namespace sees them, each link's mount from statx); the image keeps each
mapped file once per process, placed on its mount like an open file. The
stand-in maps every such file (one page, read-only, private) from the
restored mount, so /proc/PID/maps and map_files name the same files and the
mounts are busy the same way; contents and addresses are not restored.
A mapped file that was unlinked since (a library replaced by an upgrade) is
kept as a ghost when its filesystem's files are dumped, and a file on a
lazily unmounted mount keeps that detached mount, as an open file would
(engine/placement.py `_place_maps`). Not recorded: anonymous shared memory and
memfds (`kernel_memory`); a deleted file restore cannot make again is refused
(engine/mountrules.py `deleted_mapping`, asked before the stop too). The executable is recorded and
mapped like the others, and on x86-64 a stand-in makes it its own
/proc/PID/exe once it is detached (become_exe): a few instructions in an
anonymous page unmap the interpreter's executable (the kernel refuses a new
exe while the old one is mapped) and call prctl(PR_SET_MM, PR_SET_MM_MAP)
with the exe fd (CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN), then pause for
good: from then on no Python runs in it. Elsewhere it stays its interpreter.
"""

from __future__ import annotations

import ctypes
import mmap
import os

from engine import kernel

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]


def read(hostproc: int, pid: int) -> dict:
    """{"maps": [(abs path, mnt id, "map_files/NAME")], "exe": (abs path, mnt id) | None} of `pid`
    (in its namespace); a deleted file's path ends in " (deleted)", as the kernel shows it."""
    # By path and mount: a stand-in maps a library from the restored mount besides its interpreter's
    # copy of the same path from the restorer's (keyed by path alone, which one stayed was chance).
    seen: dict[tuple[str, int], tuple[str, int, str]] = {}
    try:
        dfd = os.open(f"{pid}/map_files", os.O_RDONLY | os.O_DIRECTORY, dir_fd=hostproc)
    except OSError:
        return {"maps": [], "exe": None}
    try:
        names = os.listdir(dfd)
    finally:
        os.close(dfd)
    for name in names:
        link = f"{pid}/map_files/{name}"
        try:
            path = os.readlink(link, dir_fd=hostproc)
            if not path.startswith("/"):
                continue
            mnt = kernel.statx_mnt_id(link, dfd=hostproc)
            seen.setdefault((path, mnt), (path, mnt, f"map_files/{name}"))
        except OSError:
            continue
    exe = None
    try:
        path = os.readlink(f"{pid}/exe", dir_fd=hostproc)
        if path.startswith("/") and not path.endswith(kernel.DELETED):
            exe = (path, kernel.statx_mnt_id(f"{pid}/exe", dfd=hostproc))
    except OSError:
        pass
    return {"maps": sorted(seen.values()), "exe": exe}


_KERNEL_MEMORY: set[int] | None = None
# Pseudo filesystems the kernel mounts for itself that hold only memory, never mounted in a
# namespace: aio rings (io_setup), dma-bufs, memfd_secret areas, anonymous inodes.
_MEMORY_MAGICS = {0xA10A10A1, 0x444D4142, 0x5345434D, 0x09041934}


def kernel_memory(mnt: int, link: str) -> bool:
    """Whether a mapping on mount `mnt` (its /proc map_files `link`) is memory of one of the
    kernel's internal mounts, which no filesystem of the tree holds: memfds, shared anonymous and
    SysV memory, hugetlb memory (their mounts learnt from memfds of our own, one per huge page
    size), aio rings, dma-bufs and the like (by their filesystem). A deleted file on any other
    mount no dumped namespace has is a detached mount's (or one outside the dump)."""
    if mnt in _internal_mounts():
        return True
    try:
        fd = os.open(link, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return kernel.fstatfs_type(fd) in _MEMORY_MAGICS
    except OSError:
        return False
    finally:
        os.close(fd)


def _internal_mounts() -> set[int]:
    """The mount ids of the kernel's shmem and hugetlbfs mounts (of memfds we make)."""
    global _KERNEL_MEMORY
    if _KERNEL_MEMORY is None:
        flags = [0]
        try:
            sizes = os.listdir("/sys/kernel/mm/hugepages")   # hugepages-2048kB ...
        except OSError:
            sizes = []
        for name in sizes:
            kb = int(name.removeprefix("hugepages-").removesuffix("kB"))
            flags.append(os.MFD_HUGETLB | ((kb * 1024).bit_length() - 1) << 26)
        found = set()
        for f in flags:
            try:
                fd = os.memfd_create("mntcr-probe", os.MFD_CLOEXEC | f)
            except OSError:
                continue   # (no huge pages of that size)
            try:
                found.add(kernel.statx_mnt_id("", fd, kernel.AT_EMPTY_PATH))
            finally:
                os.close(fd)
        _KERNEL_MEMORY = found
    return _KERNEL_MEMORY


_MAPPED: set[int] = set()   # addresses map_files mapped (kept when the interpreter is unmapped)


def map_files(fds: list[int]) -> None:
    """In a stand-in: map one page of each file read-only and private, and keep it mapped."""
    for fd in fds:
        addr = _libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap: {os.strerror(err)}")
        _MAPPED.add(addr)


def exe_regions(maps: str, start_code: int) -> list[tuple[int, int]]:
    """The regions [(addr, len)] of /proc/PID/maps text `maps` that map the executable: the file
    mapped at `start_code` (/proc/PID/stat field 26), told by the device and inode maps shows.

    Not by a stat of /proc/self/exe: on overlayfs (a VM guest's root) that names the overlay's
    device while maps names the layer's, so nothing matched and the interpreter stayed mapped.
    """
    rows = []
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        rows.append((lo, hi, parts[3], parts[4]))
    key = next(((dev, ino) for lo, hi, dev, ino in rows if lo <= start_code < hi), None)
    if key is None or key[1] == "0":
        return []
    return [(lo, hi - lo) for lo, hi, dev, ino in rows if (dev, ino) == key]


def _interpreter() -> tuple | None:
    """(regions of our executable [(addr, len)], /proc/self/stat fields) read now, while /proc is
    the host's (stand-ins are forks of the restorer: same layout; they chroot later)."""
    if os.uname().machine != "x86_64":
        return None
    try:
        with open("/proc/self/stat", errors="surrogateescape") as f:
            st = f.read().rsplit(")", 1)[1].split()
        with open("/proc/self/maps") as f:
            regions = exe_regions(f.read(), int(st[26 - 3]))
        return (regions, st) if regions else None
    except (OSError, ValueError, IndexError):
        return None


_SELF = _interpreter()

# x86-64: rdi -> [n, (addr, len) * n, &prctl_mm_map, sizeof, exe fd, ids?, ngroups, &groups,
# rgid, egid, sgid, ruid, euid, suid, fsgid, fsuid, dumpable, &cap header, &cap data, keepcaps, ambient];
# munmap each, prctl(PR_SET_MM, PR_SET_MM_MAP, map, size, 0), close(exe fd), when ids?:
# prctl(PR_SET_KEEPCAPS, keepcaps) (else leaving root clears the permitted set capset then cannot
# raise), setgroups, setresgid, setfsgid, setresuid, setfsuid (the ids a stand-in takes last: prctl
# needs the privilege they drop; userns_cr.become says why in this order), prctl(PR_SET_DUMPABLE)
# (changing ids cleared it); capset (the capabilities, last: everything before needs them),
# prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, bit) for each bit of ambient, prctl(PR_SET_KEEPCAPS, 0);
# then pause() for ever.
_BLOB = bytes.fromhex(
    "4989fc" "4d8b2c24" "4d8d742408"                         # r12 = args; r13 = n; r14 = &regions
    "4d85ed" "7417"                                          # loop: if !r13 goto done
    "498b3e" "498b7608" "b80b000000" "0f05"                  # munmap([r14], [r14+8])
    "4983c610" "49ffcd" "ebe4"                               # r14 += 16; r13--; goto loop
    "bf23000000" "be0e000000" "498b16" "4d8b5608" "4d31c0"   # done: prctl(35, 14, [r14], [r14+8], 0)
    "b89d000000" "0f05"
    "498b7e10" "b803000000" "0f05"                           # close([r14+16])
    "49837e1800" "746e"                                      # if ![r14+24] goto caps
    "bf08000000" "498bb688000000" "b89d000000" "0f05"        # prctl(PR_SET_KEEPCAPS, [r14+136])
    "498b7e20" "498b7628" "b874000000" "0f05"                # setgroups([r14+32], [r14+40])
    "498b7e30" "498b7638" "498b5640" "b877000000" "0f05"     # setresgid([r14+48], [r14+56], [r14+64])
    "498b7e60" "b87b000000" "0f05"                           # setfsgid([r14+96])
    "498b7e48" "498b7650" "498b5658" "b875000000" "0f05"     # setresuid([r14+72], [r14+80], [r14+88])
    "498b7e68" "b87a000000" "0f05"                           # setfsuid([r14+104])
    "bf04000000" "498b7670" "b89d000000" "0f05"              # prctl(PR_SET_DUMPABLE, [r14+112])
    "498b7e78" "498bb680000000" "b87e000000" "0f05"          # caps: capset([r14+120], [r14+128]) (NULL: EFAULT)
    "4d8bae90000000" "4531e4"                                # r13 = [r14+144]; r12 = 0
    "4d85ed" "7428"                                          # amb: if !r13 goto kept
    "41f6c501" "741a"                                        # if !(r13 & 1) goto next
    "bf2f000000" "be02000000" "4c89e2" "4d31d2" "4d31c0"     # prctl(PR_CAP_AMBIENT, RAISE, r12, 0, 0)
    "b89d000000" "0f05"
    "49d1ed" "49ffc4" "ebd3"                                 # next: r13 >>= 1; r12++; goto amb
    "bf08000000" "31f6" "b89d000000" "0f05"                  # kept: prctl(PR_SET_KEEPCAPS, 0)
    "b822000000" "0f05" "ebf7")                              # hold: pause(); goto hold


def _may_set_exe() -> bool:
    """CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE in our effective set (what PR_SET_MM_MAP's exe_fd
    needs): checked first, since the interpreter is gone before prctl answers."""
    import struct
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0))   # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)
    if _libc.capget(header, data) != 0:
        return False
    eff0, _p0, _i0, eff1, _p1, _i1 = struct.unpack("=6I", data.raw)
    return bool(eff0 & (1 << 21)) or bool(eff1 & (1 << (40 - 32)))


def can_become_exe() -> bool:
    """Whether `become_exe` can work here (x86-64, our layout known, the privilege it needs)."""
    return _SELF is not None and _may_set_exe()


def become_exe(exe_fd: int, ids: tuple | None = None, caps: dict | None = None) -> bool:
    """In a detached stand-in: make the file `exe_fd` our /proc/PID/exe, then take `ids` (uids,
    gids: real, effective, saved[, fs]; groups; dumpable; whether to keep the permitted set for
    `caps`) when given, then `caps` (as kernel.take_caps) when given, and pause for good (never
    returns). False (nothing done) where this cannot be done: not x86-64, or no layout known."""
    import signal
    import struct
    if _SELF is None or not _may_set_exe():
        return False   # (a stand-in that took unprivileged ids in its user namespace keeps its own)
    regions, st = _SELF
    regions = [(a, n) for a, n in regions if a not in _MAPPED]
    field = lambda n: int(st[n - 3])   # noqa: E731  (field n, 1-indexed, of /proc/PID/stat)
    _libc.sbrk.restype = ctypes.c_void_p
    brk = _libc.sbrk(0)
    mm = struct.pack("=11QQII", field(26), field(27), field(45), field(46), field(47), brk, field(28),
                     field(48), field(49), field(50), field(51), 0, 0, exe_fd)
    mm_buf = ctypes.create_string_buffer(mm, len(mm))
    uid, gid, groups, dumpable, keep_caps = ids or ((0, 0, 0), (0, 0, 0), (), None, False)
    groups_buf = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
    cap_head, cap_body = kernel.cap_data(caps or {"eff": 0, "prm": 0, "inh": 0})
    fs = lambda xs: xs[3] if len(xs) > 3 else xs[1]   # noqa: E731  (the fs id; else the effective one)
    args = struct.pack("=Q", len(regions)) + b"".join(struct.pack("=QQ", a, n) for a, n in regions) \
        + struct.pack("=QQQ", ctypes.addressof(mm_buf), len(mm), exe_fd) \
        + struct.pack("=QQQ3Q3QQQQQQQQ", 1 if ids else 0, len(groups), ctypes.addressof(groups_buf), *gid[:3],
                      *uid[:3], fs(gid), fs(uid), 1 if dumpable else 0, ctypes.addressof(cap_head) if caps else 0,
                      ctypes.addressof(cap_body), 1 if keep_caps and caps else 0, caps["amb"] if caps else 0)
    args_buf = ctypes.create_string_buffer(args, len(args))
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_BLOB)
    code = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    # No handler of ours may run once the interpreter is gone.
    for sig in range(1, signal.NSIG):
        try:
            if signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    code(ctypes.addressof(args_buf))
    return True   # (not reached)
