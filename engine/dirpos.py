"""Where a process reading a directory goes on: its getdents position.

A directory's offset is its filesystem's cookie, not a count of entries: a hash of the next name
(ext4), an index each entry got when it was made (tmpfs). On a filesystem restore opens again as
it was (an external mount, a block device, an overlay's layers) the directory is the same and so is
the cookie: restore seeks its new fd there, as CRIU does. A filesystem whose files restore makes
again (archived at dump: tmpfs, ramfs) hands out new cookies and lists its entries in another
order (tar extracts them in the order it read them, and tmpfs lists the newest first): a directory
read to its end there is read to its end again at restore (`dir_end`), one read part way is
refused, before the stop, since what the process had left to read could not be what the restored
fd gives.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from engine import kernel
from engine.fds import FdError

_BUF = 1 << 16


def listing(fd: int) -> list[tuple[bytes, int]]:
    """(name, the offset after it) of each entry of directory `fd` from its position on, in the
    order getdents gives them; the fd's position ends at the end of the directory."""
    buf = ctypes.create_string_buffer(_BUF)
    out = []
    while True:
        n = kernel.syscall("getdents64", ctypes.c_int(fd), buf, ctypes.c_uint(_BUF))
        if n == 0:
            return out
        raw, i = buf.raw[:n], 0
        while i < n:
            _ino, off, reclen = struct.unpack_from("=QqH", raw, i)
            out.append((raw[i + 19:i + reclen].split(b"\0", 1)[0], off))
            i += reclen


def _remade(fd: int) -> bool:
    """Whether restore makes the files of `fd`'s filesystem again (a content type: archived)."""
    from engine import fs
    t = fs.by_magic(kernel.fstatfs_type(fd))
    return t is not None and t.content


def dump(where: str, link: str, pos: int) -> dict:
    """The fields of the fd entry of a directory open at `link` (/proc/PID/fd/N) at offset `pos`
    ({"dir_end": True}: read to its end on a filesystem restore makes again), or FdError when it
    was read part way on one."""
    if not pos:
        return {}
    fd = os.open(link, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)   # (our own description)
    try:
        if not _remade(fd):
            return {}
        names = listing(fd)
    finally:
        os.close(fd)
    if names and pos == names[-1][1]:
        return {"dir_end": True}
    done = next((i + 1 for i, (_, off) in enumerate(names) if off == pos), None)
    read = f"{done} of its {len(names)} entries" if done is not None else f"to offset {pos}"
    raise FdError(errno.EOPNOTSUPP, f"{where}: a directory read part way ({read}) on a filesystem whose files "
                                    "restore makes again, in another order: not supported; dump it once the "
                                    "process has read the directory to its end or closed it")


def restore(fd: int, entry: dict) -> None:
    """Put restored directory `fd` where the dumped one was: its end, or the dumped offset."""
    if entry.get("dir_end"):
        listing(fd)
    elif entry["pos"]:
        os.lseek(fd, entry["pos"], os.SEEK_SET)
