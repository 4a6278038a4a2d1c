"""A minimal writer and reader of the cpio "newc" format the kernel unpacks as initramfs.

Written in Python so that building an initramfs needs no privileges (device
nodes are just header fields) and its contents can be listed in tests.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterator

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: path (no leading /), mode (type + permission bits), data."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @property
    def kind(self) -> str:
        """'dir', 'file', 'symlink', 'chr', 'blk' or 'other'."""
        m = self.mode
        return ("dir" if stat.S_ISDIR(m) else "file" if stat.S_ISREG(m) else "symlink" if stat.S_ISLNK(m)
                else "chr" if stat.S_ISCHR(m) else "blk" if stat.S_ISBLK(m) else "other")


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


class Writer:
    """Streams newc entries to a binary file; call close() to write the trailer."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.ino = 1
        self.offset = 0

    def _write(self, b: bytes) -> None:
        self.f.write(b)
        self.offset += len(b)

    def add(self, e: Entry) -> None:
        """Append one entry (parents must have been added first for the kernel to create it)."""
        name = e.path.lstrip("/").encode() + b"\0"
        fields = [self.ino, e.mode, 0, 0, 2 if stat.S_ISDIR(e.mode) else 1, 0, len(e.data),
                  0, 0, e.rdev[0], e.rdev[1], len(name), 0]
        hdr = _MAGIC + b"".join(b"%08X" % v for v in fields)
        self.ino += 1
        self._write(hdr + name)
        self._write(_pad(self.offset))
        self._write(e.data)
        self._write(_pad(self.offset))

    def dir(self, path: str, perm: int = 0o755) -> None:
        self.add(Entry(path, stat.S_IFDIR | perm))

    def file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self.add(Entry(path, stat.S_IFREG | perm, data))

    def symlink(self, path: str, target: str) -> None:
        self.add(Entry(path, stat.S_IFLNK | 0o777, target.encode()))

    def chr(self, path: str, major: int, minor: int, perm: int = 0o600) -> None:
        self.add(Entry(path, stat.S_IFCHR | perm, rdev=(major, minor)))

    def close(self) -> None:
        """Write the trailer entry (the archive is complete after this)."""
        self.add(Entry(_TRAILER, 0))


def read(data: bytes) -> Iterator[Entry]:
    """Iterate over the entries of a newc archive (several concatenated archives too)."""
    off = 0
    while off + 110 <= len(data):
        if data[off:off + 6] != _MAGIC:
            if data[off:off + 4] == b"\0\0\0\0":  # padding between concatenated archives
                off += 4
                continue
            raise ValueError(f"not a newc cpio archive at offset {off}")
        vals = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = vals[1], vals[6], vals[9], vals[10], vals[11]
        name_start = off + 110
        name = data[name_start: name_start + namesize - 1].decode()
        off = name_start + namesize
        off += (4 - off % 4) % 4
        body = data[off: off + filesize]
        off += filesize
        off += (4 - off % 4) % 4
        if name == _TRAILER:
            continue
        yield Entry(name, mode, body, (rmaj, rmin))
