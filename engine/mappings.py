"""File mappings and the executable of a process: which files on which mounts it maps.

Dump lists /proc/PID/map_files inside the process's mount namespace (paths as
the namespace sees them, each link's mount from statx); the image keeps each
mapped file once per process, placed on its mount like an open file. The
stand-in maps every such file (one page, read-only, private) from the
restored mount, so /proc/PID/maps and map_files name the same files and the
mounts are busy the same way; contents and addresses are not restored.
Mappings of files on no mount of the tree (anonymous shared memory, memfds,
deleted or detached files) are not recorded. The executable is recorded and
mapped like the others: a stand-in's own /proc/PID/exe stays its interpreter.
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
    """{"maps": [(abs path, mnt id)], "exe": (abs path, mnt id) | None} of `pid` (in its namespace)."""
    seen: dict[str, tuple[str, int]] = {}
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
            if path in seen or path.endswith(" (deleted)") or not path.startswith("/"):
                continue
            seen[path] = (path, kernel.statx_mnt_id(link, dfd=hostproc))
        except OSError:
            continue
    exe = None
    try:
        path = os.readlink(f"{pid}/exe", dir_fd=hostproc)
        if path.startswith("/") and not path.endswith(" (deleted)"):
            exe = (path, kernel.statx_mnt_id(f"{pid}/exe", dfd=hostproc))
    except OSError:
        pass
    return {"maps": sorted(seen.values()), "exe": exe}


def map_files(fds: list[int]) -> None:
    """In a stand-in: map one page of each file read-only and private, and keep it mapped."""
    for fd in fds:
        addr = _libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            err = ctypes.get_errno()
            raise OSError(err, f"mmap: {os.strerror(err)}")
