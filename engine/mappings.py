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
mapped like the others (one on a detached mount where its mapping keeps that mount), and on
x86-64 a stand-in makes it its own /proc/PID/exe once it is detached (become_exe): a few instructions in an
anonymous page unmap the interpreter's executable (the kernel refuses a new
exe while the old one is mapped) and call prctl(PR_SET_MM, PR_SET_MM_MAP)
with the exe fd (CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN), take the process's ids and
capabilities, make its threads (engine/threads.py), tell the restore how each step went (engine/lastword.py: a failed one is a failed
restore, never a process left with the restorer's identity) and pause for good: from then on no
Python runs in it. Elsewhere it stays its interpreter.
"""

from __future__ import annotations

import ctypes
import mmap
import os

from engine import kernel, lastword, posixtimers, procargs, seccomp, threads as threadsteps

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]


def read(hostproc: int, pid: int) -> dict:
    """{"maps": [(abs path, mnt id, "map_files/NAME")], "exe": (abs path, mnt id) | None} of `pid`
    (in its namespace); a deleted file's path ends in " (deleted)", as the kernel shows it (an
    executable replaced by an upgrade while it runs, too)."""
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
        if path.startswith("/"):   # (a deleted one too: restore runs its ghost, engine/placement.py)
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
    the host's (stand-ins are forks of the restorer: same layout; they chroot later). The stat
    fields are procargs' read at its import (the fields used here never change in a process's
    life: code, data, stack and brk start, argument and environment bounds)."""
    if os.uname().machine != "x86_64":
        return None
    st = procargs.STAT
    if st is None:
        return None   # (/proc/self/stat could not be read)
    try:
        with open("/proc/self/maps") as f:
            regions = exe_regions(f.read(), int(st[26 - 3]))
        return (regions, st) if regions else None
    except (OSError, ValueError, IndexError):
        return None


_SELF = _interpreter()

# x86-64 code that runs a program of system calls and tells how it went (engine/lastword.py): rdi ->
# [n, report fd, &status (16 zero bytes), n entries of lastword.ENTRY (nr, a0..a5, check, expect)];
# each call is checked (1: an answer -4095..-1 is an error; 2: the answer must be `expect`, as
# setfsuid(-1) answers the fs id kept; 3: clone, whose new thread, answered 0, parks at once:
# engine/threads.py; a nonzero `expect` then points at [address, kind] pairs ending in a zero
# address, where the maker writes the new tid (kind 0) or its CPU clock id, (~tid << 3) | 6
# (kind 1), as 32 bits: engine/posixtimers.py `steps`); the first that fails writes (its index
# from 1, the answer) and its entry on the report fd; else the 16 zero bytes go. Then
# close(report fd) and pause() for ever. (Made with `as`; the source is in the comments.)
_BLOB = bytes.fromhex(
    "4989fc" "4d8b2c24" "4d8d742418" "4531ff"                 # r12 = args; r13 = n; r14 = entry; r15 = 0
    "4d39ef" "0f83c6000000"                                  # next: cmp r15, r13; jae done
    "498b06" "498b7e08" "498b7610" "498b5618"                # rax, rdi, rsi, rdx = nr, a0, a1, a2
    "4d8b5620" "4d8b4628" "4d8b4e30" "0f05"                  # r10, r8, r9 = a3, a4, a5; syscall
    "498b4e38" "4883f901" "750a"                             # rcx = check; cmp rcx, 1; jne same
    "483d01f0ffff" "735d" "eb4f"                             # cmp rax, -4095; jae fail; jmp step
    "4883f902" "7508" "493b4640" "754f" "eb41"               # same: cmp rcx, 2; jne clone; cmp rax, expect; jne fail; jmp step
    "4883f903" "753b" "4885c0" "0f849a000000"                # clone: cmp rcx, 3; jne step; test rax, rax; jz hold
    "483d01f0ffff" "7336"                                    # cmp rax, -4095; jae fail
    "498b5e40" "4885db" "7421"                               # rbx = expect; test rbx, rbx; jz step
    "488b13" "4885d2" "7419"                                 # fan: rdx = [rbx]; test rdx, rdx; jz step
    "89c1" "48837b0800" "7408"                               # ecx = eax; cmp qword [rbx+8], 0; je put
    "f7d1" "c1e103" "83c906"                                 # not ecx; shl ecx, 3; or ecx, 6
    "890a" "4883c310" "ebdf"                                 # put: [rdx] = ecx; rbx += 16; jmp fan
    "4983c648" "49ffc7" "e96bffffff"                         # step: r14 += 72; r15++; jmp next
    "498b5c2410" "498d4f01" "48890b" "48894308"              # fail: rbx = &status; [rbx] = r15 + 1; [rbx+8] = rax
    "498b7c2408" "4889de" "ba10000000" "b801000000" "0f05"   # write(report, status, 16)
    "498b7c2408" "4c89f6" "ba48000000" "b801000000" "0f05"   # write(report, entry, 72)
    "eb16"                                                   # jmp close
    "498b7c2408" "498b742410" "ba10000000" "b801000000" "0f05"  # done: write(report, status (zeros), 16)
    "498b7c2408" "b803000000" "0f05"                         # close: close(report)
    "b822000000" "0f05" "ebf7")                              # hold: pause(); jmp hold


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


def _program(regions, mm_buf, exe_fd: int, ids: tuple | None, caps: dict | None, keep: list,
             threads: list = (), filters: list | None = None, pdeathsig: int = 0, blocked: int = 0,
             timers: tuple = ((), (), True), fixups: list | None = None, late_limits: dict | None = None) -> list[tuple]:
    """The system calls of become_exe as lastword.ENTRY tuples; `keep` holds the buffers they point at.

    Unmap the interpreter's executable (the kernel refuses a new exe while the old one is mapped),
    prctl(PR_SET_MM, PR_SET_MM_MAP) with the exe fd, close it; with `ids`: PR_SET_KEEPCAPS (else
    leaving root clears the permitted set capset then cannot raise), setgroups, setresgid,
    setfsgid, setresuid, setfsuid (the ids a stand-in takes last: prctl needs the privilege they
    drop; userns_cr.become says why in this order; each fs id asked again, as setfs*id answers
    the old one), PR_SET_DUMPABLE (changing ids cleared it); with `caps`: capset (last: everything
    before needs them) and an ambient raise a bit; PR_SET_KEEPCAPS 0; PR_SET_PDEATHSIG `pdeathsig`
    when given (after the ids: changing them clears it); then a thread for each (name, mask) of
    `threads` (engine/threads.py `steps`: made last, each holds the ids and capabilities taken;
    `blocked`: our mask, given back after a thread's own); then the POSIX timers that notify them
    (`timers`: (made after them, made before, ids restorable), engine/posixtimers.py `steps`:
    (array, index, step) into `fixups` for a word to point at that step's first argument once
    the program has its place); the resource limits `late_limits` ({NAME: [soft, hard]}) when given;
    then seccomp `filters` on every thread (engine/seccomp.py `steps`)."""
    prog = [(11, a, n, 0, 0, 0, 0, 1, 0) for a, n in regions]
    prog.append((157, 35, 14, ctypes.addressof(mm_buf), len(mm_buf.raw), 0, 0, 1, 0))
    prog.append((3, exe_fd, 0, 0, 0, 0, 0, 0, 0))
    if ids:
        uid, gid, groups, dumpable, keep_caps = ids
        fs = lambda xs: xs[3] if len(xs) > 3 else xs[1]   # noqa: E731  (the fs id; else the effective one)
        prog.append((157, 8, 1 if keep_caps and caps else 0, 0, 0, 0, 0, 1, 0))
        if groups is not None:   # (None: a user namespace whose setgroups is "deny" keeps what it has)
            groups_buf = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
            keep.append(groups_buf)
            prog.append((116, len(groups), ctypes.addressof(groups_buf), 0, 0, 0, 0, 1, 0))
        prog += [(119, *gid[:3], 0, 0, 0, 1, 0),
                 (123, fs(gid), 0, 0, 0, 0, 0, 0, 0), (123, 0xFFFFFFFF, 0, 0, 0, 0, 0, 2, fs(gid)),
                 (117, *uid[:3], 0, 0, 0, 1, 0),
                 (122, fs(uid), 0, 0, 0, 0, 0, 0, 0), (122, 0xFFFFFFFF, 0, 0, 0, 0, 0, 2, fs(uid)),
                 (157, 4, 1 if dumpable else 0, 0, 0, 0, 0, 1, 0)]
    if caps:
        head, body = kernel.cap_data(caps)
        keep += [head, body]
        prog.append((126, ctypes.addressof(head), ctypes.addressof(body), 0, 0, 0, 0, 1, 0))
        prog += [(157, 47, 2, c, 0, 0, 0, 1, 0) for c in range(64) if caps["amb"] >> c & 1]
    prog.append((157, 8, 0, 0, 0, 0, 0, 1, 0))
    if pdeathsig:
        prog.append((157, 1, pdeathsig, 0, 0, 0, 0, 1, 0))
    late, made, restore_ids = timers
    tsteps, fans, relocs = posixtimers.steps(list(late), list(made), len(threads), keep, restore_ids)
    if threads:
        prog += threadsteps.steps(list(threads), threadsteps.own_name(), keep, blocked, fans)
    if fixups is not None:
        fixups += [(arr, at, len(prog) + i) for arr, at, i in relocs]
    prog += tsteps
    if late_limits:
        prog += threadsteps.late_steps(late_limits, keep)   # (after the threads: engine/threads.py `limits_before`)
    if filters:
        prog += seccomp.steps(filters, keep)   # (last, on every thread: engine/seccomp.py `late`)
    return prog


def become_exe(exe_fd: int, report_fd: int, ids: tuple | None = None, caps: dict | None = None,
               threads: list = (), filters: list | None = None, pdeathsig: int = 0, blocked: int = 0,
               timers: tuple = ((), (), True), late_limits: dict | None = None, args: tuple | None = None) -> bool:
    """In a detached stand-in: make the file `exe_fd` our /proc/PID/exe, then take `ids` (uids,
    gids: real, effective, saved[, fs]; groups; dumpable; whether to keep the permitted set for
    `caps`) when given, then `caps` (as kernel.take_caps) when given, then make a thread for each
    (name, mask) of `threads` (engine/threads.py) and the POSIX timers `timers` that notify them
    (as _program), tell how it went on
    `report_fd` (engine/lastword.py: the first step that failed, which ends the steps) and pause
    for good (never returns). `args`: the (arg_start, arg_end, env_start, env_end) our command line
    and environment were given (engine/procargs.py `take`), kept by our PR_SET_MM_MAP. False (nothing done) where this cannot be done: not x86-64, or no
    layout known."""
    import struct
    if _SELF is None or not _may_set_exe():
        return False   # (a stand-in that took unprivileged ids in its user namespace keeps its own)
    regions, st = _SELF
    regions = [(a, n) for a, n in regions if a not in _MAPPED]
    field = lambda n: int(st[n - 3])   # noqa: E731  (field n, 1-indexed, of /proc/PID/stat)
    _libc.sbrk.restype = ctypes.c_void_p
    brk = _libc.sbrk(0)
    shown = args or (field(48), field(49), field(50), field(51))
    mm = struct.pack("=11QQII", field(26), field(27), field(45), field(46), field(47), brk, field(28),
                     *shown, 0, 0, exe_fd)
    mm_buf = ctypes.create_string_buffer(mm, len(mm))
    keep: list = []
    fixups: list = []
    prog = _program(regions, mm_buf, exe_fd, ids, caps, keep, threads, filters, pdeathsig, blocked, timers, fixups,
                    late_limits)
    status = ctypes.create_string_buffer(16)
    mask = (1 << 64) - 1
    args = struct.pack("=QQQ", len(prog), report_fd, ctypes.addressof(status)) \
        + b"".join(lastword.ENTRY.pack(*(x & mask for x in e)) for e in prog)
    args_buf = ctypes.create_string_buffer(args, len(args))
    for arr, at, i in fixups:
        arr[at] = ctypes.addressof(args_buf) + 24 + lastword.ENTRY.size * i + 8   # (step i's first argument)
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_BLOB)
    code = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    # (No handler of ours may run once the interpreter is gone: the stand-in took its process's
    # ignored signals first, every other one at its default action: kernel.take_ignored_signals.)
    code(ctypes.addressof(args_buf))
    return True   # (not reached)
