"""memfds and anonymous shared memory: files of the kernel's own shmem mount, on no mount of the tree.

A memfd keeps its name, content, seals and offset. An fd on anonymous shared memory (a
MAP_SHARED|MAP_ANONYMOUS mapping opened through /proc/PID/map_files, CRIU's shmemfd; the
kernel names it "/dev/zero (deleted)") keeps its content and offset: restore maps a page of
new anonymous shared memory, opens it through its own map_files (CAP_SYS_ADMIN), unmaps it,
and gives the file the dumped size and content. Descriptions of one file share one object.
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import ctypes
import errno
import fcntl
import mmap
import os
from engine import rx

from engine.fds import FdError, FdKind, RestoreFd, register
from engine.fds import sys as fsys

_NAME = rx.compile(r"^/memfd:(.*) \(deleted\)$")
SHMEM = "/dev/zero (deleted)"   # shmem_zero_setup's file, on the kernel's shmem mount
MAX_SIZE = 64 << 20   # kept inline in the image: refuse bigger ones rather than bloat the manifest
MFD_CLOEXEC, MFD_ALLOW_SEALING = 1, 2
F_SEAL_SEAL = 1
# Every seal bit Linux defines: (name, first kernel). An image from a newer kernel may hold one an
# older kernel refuses (EINVAL): restore names it instead of a bare "Invalid argument".
SEALS = {0x1: ("F_SEAL_SEAL", "3.17"), 0x2: ("F_SEAL_SHRINK", "3.17"), 0x4: ("F_SEAL_GROW", "3.17"),
         0x8: ("F_SEAL_WRITE", "3.17"), 0x10: ("F_SEAL_FUTURE_WRITE", "5.1"), 0x20: ("F_SEAL_EXEC", "6.3")}
KNOWN_SEALS = sum(SEALS)


def _refuse_size(where: str, size: int) -> None:
    """Refuse a file too big to keep inline in the image."""
    if size > MAX_SIZE:
        raise FdError(0, f"{where}: memfd of {size} bytes: more than {MAX_SIZE >> 20} MiB is not dumped")


def _precheck(d) -> None:
    """Before the tree is stopped: its size (it may still grow until then: `_dump` asks again)."""
    _refuse_size(d.where, os.stat(f"/proc/{d.pid}/fd/{d.fd}").st_size)


def _shmem_precheck(d) -> None:
    """Before the tree is stopped: a "/dev/zero (deleted)" of the kernel's shmem mount, not a file so
    named on a mount of the tree; its size."""
    from engine import mappings
    link = f"/proc/{d.pid}/fd/{d.fd}"
    if not mappings.kernel_memory(int(d.info()["mnt_id"][0]), link):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a deleted file named /dev/zero on a mount of the tree, "
                                        "not anonymous shared memory: not supported")
    _precheck(d)


def _content(d) -> tuple[bytes, int]:
    """(content, seals) of the file behind fd `d`."""
    fd = os.open(f"/proc/{d.pid}/fd/{d.fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        _refuse_size(d.where, size)
        return os.pread(fd, size, 0), fcntl.fcntl(fd, fsys.F_GET_SEALS)
    finally:
        os.close(fd)


def _dump(d) -> dict:
    obj = f"memfd-{os.stat(f'/proc/{d.pid}/fd/{d.fd}').st_ino}"
    if obj not in d.objects:
        data, seals = _content(d)
        d.objects[obj] = {"kind": "memfd", "name": _NAME.match(d.target)[1],
                          "data": binascii.b2a_base64(data, newline=False).decode(),
                          "seals": seals}
    return {"obj": obj}


def _shmem_dump(d) -> dict:
    _shmem_precheck(d)
    obj = f"shmem-{os.stat(f'/proc/{d.pid}/fd/{d.fd}').st_ino}"
    if obj not in d.objects:
        d.objects[obj] = {"kind": "shmem", "data": binascii.b2a_base64(_content(d)[0], newline=False).decode()}
    return {"obj": obj}


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if not isinstance(entry.get("obj"), str):
        _fail(f"{what}: a memfd needs 'obj'")


def _check_data(obj: dict, what: str) -> None:
    from engine.image import _fail
    if not isinstance(obj.get("data"), str) or len(obj["data"]) > MAX_SIZE * 4 // 3 + 4:
        _fail(f"{what}: bad content of shared memory")


def _check_object(obj: dict, what: str) -> None:
    from engine.image import _fail
    _check_data(obj, what)
    if not isinstance(obj.get("name"), str) or len(obj["name"]) > 249 or "\0" in obj["name"] \
            or not isinstance(obj.get("seals"), int) or isinstance(obj["seals"], bool):
        _fail(f"{what}: bad memfd")
    if obj["seals"] & ~KNOWN_SEALS or obj["seals"] < 0:
        _fail(f"{what}: memfd seals {obj['seals']:#x}: unknown seal bits {obj['seals'] & ~KNOWN_SEALS:#x}")


def _make_memfd(r: RestoreFd, obj: dict) -> int:
    fd = fsys.memfd_create(obj["name"], MFD_CLOEXEC | MFD_ALLOW_SEALING)
    os.write(fd, binascii.a2b_base64(obj["data"]))
    # Seals last (a write seal would stop the write above); a memfd made without
    # MFD_ALLOW_SEALING shows F_SEAL_SEAL, which is what we add then.
    if obj["seals"]:
        try:
            fcntl.fcntl(fd, fsys.F_ADD_SEALS, obj["seals"])
        except OSError as e:
            os.close(fd)
            if e.errno != errno.EINVAL:
                raise
            newest = max((b for b in SEALS if obj["seals"] & b), key=lambda b: [int(x) for x in SEALS[b][1].split(".")])
            name, since = SEALS[newest]
            # (no r.where: the caller names the fd)
            raise FdError(e.errno, f"memfd seals {obj['seals']:#x} refused by this kernel "
                                   f"(Linux {os.uname().release}; {name} needs Linux >= {since})") from None
    return fd


def _make_shmem(r: RestoreFd, obj: dict) -> int:
    from engine.mappings import _libc
    addr = _libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                      -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise FdError(errno.ENOMEM, f"{r.where}: mmap of anonymous shared memory failed")
    try:
        fd = os.open(f"self/map_files/{addr:x}-{addr + mmap.PAGESIZE:x}", os.O_RDWR | os.O_CLOEXEC,
                     dir_fd=r.proc) if r.proc >= 0 else \
            os.open(f"/proc/self/map_files/{addr:x}-{addr + mmap.PAGESIZE:x}", os.O_RDWR | os.O_CLOEXEC)
    finally:
        _libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(mmap.PAGESIZE))
    os.ftruncate(fd, 0)
    os.write(fd, binascii.a2b_base64(obj["data"]))
    return fd


def _opener(make):
    def _open(r: RestoreFd) -> int:
        e = r.entry
        key = e["obj"]
        if key not in r.state:
            fd = make(r, r.objects[key])
            r.keep.append(fd)
            r.state[key] = fd
        # Each description opened again through /proc: its own offset and access mode.
        fd = r.reopen(r.state[key], (e["flags"] & (os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK)) | os.O_CLOEXEC)
        os.lseek(fd, e["pos"], os.SEEK_SET)
        return fd
    return _open


register(FdKind(name="memfd", matches=lambda t, m: _NAME.match(t) is not None, dump=_dump, open=_opener(_make_memfd),
                check=_check, check_object=_check_object, order=20, precheck=_precheck))
register(FdKind(name="shmem", matches=lambda t, m: t == SHMEM, dump=_shmem_dump, open=_opener(_make_shmem),
                check=_check, check_object=_check_data, order=20, precheck=_shmem_precheck))
