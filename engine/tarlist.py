"""A small archive's members read from its headers, as `tar -tv` lists them, without running tar.

restore checks every archive's members before extracting it (content.check_members): names, kinds,
hard link targets, device numbers. For a small tree that listing was a tar process of its own (a
fork and an exec on the filler's path). Dump's archives are POSIX (pax) tar files (its --xattrs and
--acls make GNU tar write that format even where its default is gnu), whose headers say all of that;
`members` reads them here, for archives up to MAX_SIZE, and only when every header is one it fully
understands: a ustar header with a good checksum and octal fields, a typeflag of a
regular file, hard link, symlink, device, directory or FIFO, at most one pax header before it with
keywords from a known set, names and hard link targets of printable ASCII with no empty, `.` or `..`
component, the end of the archive two or more zero blocks and nothing after them. Anything else
(sparse files, GNU long names, global headers, other bytes in names, damage) returns None, and the
caller runs tar's listing as before: whatever this does not read, tar decides, as it always did.
"""

from __future__ import annotations

import os

MAX_SIZE = 256 << 10   # (at most 512 headers: well under tar's own start-up to read in Python)
BLOCK = 512
_ZERO = bytes(BLOCK)
_KINDS = {b"0": "-", b"\0": "-", b"1": "h", b"2": "l", b"3": "c", b"4": "b", b"5": "d", b"6": "p"}
_TIMES = (b"mtime", b"atime", b"ctime")
_NUMBERS = (b"uid", b"gid", b"size")
_TEXTS = (b"path", b"linkpath", b"uname", b"gname")
_BINARY = (b"SCHILY.xattr.", b"SCHILY.acl.")
_DIGITS = frozenset(b"0123456789")
_OCTAL = frozenset(b"01234567")


def _octal(field: bytes) -> int | None:
    """A ustar numeric field (octal digits, ended by NUL or space; leading spaces), or None."""
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not set(text) <= _OCTAL:
        return None
    return int(text, 8)


def _time_ok(value: bytes) -> bool:
    """A pax time tar takes: seconds (not negative: none of dump's files, and tar's range is
    checked then) and at most nanoseconds."""
    whole, dot, frac = value.partition(b".")
    return (0 < len(whole) <= 18 and set(whole) <= _DIGITS
            and (not dot or (0 < len(frac) <= 9 and set(frac) <= _DIGITS)))


def _number_ok(key: bytes, value: bytes) -> bool:
    """A pax uid, gid (tar's range: 32 bits) or size (checked against the archive's own size)."""
    return 0 < len(value) <= 18 and set(value) <= _DIGITS and (key == b"size" or int(value) < 1 << 32)


def _pax(block: bytes) -> dict | None:
    """The records of a pax extended header ("LEN KEY=VALUE\\n" each), or None when one is
    malformed or has a keyword outside the known set or of other bytes than printable ASCII (tar
    reads a keyword up to a NUL)."""
    records, pos = {}, 0
    while pos < len(block):
        space = block.find(b" ", pos)
        if space < 0 or not set(block[pos:space]) <= _DIGITS or space == pos:
            return None
        end = pos + int(block[pos:space])
        if end > len(block) or end <= space + 1 or block[end - 1:end] != b"\n":
            return None
        key, eq, value = block[space + 1:end - 1].partition(b"=")
        if not eq or not key or any(c < 0x21 or c > 0x7E for c in key) or not (key in _TEXTS or key.startswith(_BINARY)
                          or (key in _TIMES and _time_ok(value))
                          or (key in _NUMBERS and _number_ok(key, value))):
            return None
        records[key] = value
        pos = end
    return records


def _plain(name: bytes, directory: bool = False) -> str | None:
    """`name` as text when tar takes it as it is: printable ASCII, relative, no empty, `.` or `..`
    component (a directory's one trailing slash aside); else None."""
    if directory and name.endswith(b"/"):
        name = name[:-1]
    if not name or any(c < 0x20 or c > 0x7E for c in name):
        return None
    if any(part in (b"", b".", b"..") for part in name.split(b"/")):
        return None
    return name.decode("ascii")


def _header(h: bytes) -> tuple | None:
    """(typeflag, name, linkname, size, (major, minor)) of a ustar header block, or None when its
    checksum, magic or numeric fields are not what GNU tar writes in the POSIX format."""
    if _octal(h[148:156]) != sum(h[:148]) + sum(h[156:]) + 8 * 0x20 or h[257:265] != b"ustar\x0000":
        return None
    fields = [_octal(h[a:b]) for a, b in ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148),
                                         (329, 337), (337, 345))]
    if None in fields:
        return None
    name, prefix = h[:100].split(b"\0", 1)[0], h[345:500].split(b"\0", 1)[0]
    if prefix:
        name = prefix + b"/" + name
    return h[156:157], name, h[157:257].split(b"\0", 1)[0], fields[3], (fields[5], fields[6])


def _entry(typeflag: bytes, name: bytes, link: bytes, dev: tuple) -> tuple | None:
    """(kind as `tar -tv` shows it, member name, hard link target or None, device or None)."""
    kind = _KINDS.get(typeflag)
    member = _plain(name, directory=kind == "d")
    if kind is None or member is None or (kind == "-" and name.endswith(b"/")):
        return None
    target = None
    if kind == "h" and (target := _plain(link)) is None:
        return None
    return kind, name.decode("ascii"), target, dev if kind in "cb" else None


def members(fd: int, size: int) -> list[tuple] | None:
    """The members of the archive at `fd` (`size` bytes) as [(kind, name, hard link target, device)],
    kind `tar -tv`'s first letter; None when it is bigger than MAX_SIZE or has anything this module
    does not read (the caller then asks tar)."""
    if size > MAX_SIZE or size % BLOCK or size < 2 * BLOCK:
        return None
    data = os.pread(fd, size, 0)
    if len(data) != size:
        return None
    found, pax, i = [], None, 0
    while i + BLOCK <= size:
        block = data[i:i + BLOCK]
        if block == _ZERO:
            # The end: two zero blocks at least, and nothing but zeros after them.
            return found if i + 2 * BLOCK <= size and not data[i:].strip(b"\0") else None
        head = _header(block)
        if head is None:
            return None
        typeflag, name, link, length, dev = head
        if pax is not None:
            name, link = pax.get(b"path", name), pax.get(b"linkpath", link)
            length = int(pax[b"size"]) if b"size" in pax else length
        start, i = i + BLOCK, i + BLOCK + -(-length // BLOCK) * BLOCK
        if i > size:
            return None
        if typeflag == b"x":
            if pax is not None or (pax := _pax(data[start:start + length])) is None:
                return None
            continue
        pax = None
        if length and typeflag not in (b"0", b"\0"):
            return None
        entry = _entry(typeflag, name, link, dev)
        if entry is None:
            return None
        found.append(entry)
    return None
