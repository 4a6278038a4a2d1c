"""The order a restored directory lists its entries in: the dumped one's.

tar archives a directory's entries in the order getdents gave them at dump (no sorting) and
extracts them in that order. tmpfs and ramfs list a directory's entries by when they were made
or last renamed there: the newest first (before 6.6, and again since 6.14: the dentries' list), or
the oldest first (6.6 to 6.13: stable offsets). A newest-first kernel so lists an extracted
directory in reverse. `keep` puts each directory of an extracted archive back in the archive's
order: it renames each entry away and back (a rename makes an entry the newest) in the order
the kernel needs, then sets the directory's times back to tar's. An entry the archive does not
hold (a socket file, made again after the extraction) stays where it is; engine/dirpos.py checks
what a part way read needs.
"""

from __future__ import annotations

import os

from engine import dirpos

_AWAY = ".mntcr-order"   # (an entry renamed away for a moment: a name tar never makes here)


def children(members: list[str]) -> dict[str, list[str]]:
    """{directory member: its entries' names in archive order} of archive members `members` (tar's
    listing order, checked names such as "sb-0/d/f"), directories with two entries or more, beneath
    a member's top (the staging directory's own entries are not a superblock's)."""
    out: dict[str, list[str]] = {}
    for m in members:
        parent, _, name = m.rpartition("/")
        if parent and name:
            out.setdefault(parent, []).append(name)
    return {p: names for p, names in out.items() if len(names) > 1}


def keep(staging: int, members: list[str]) -> list[str]:
    """Reorder the extracted directories beneath `staging` (members checked already: no `..`, none
    beneath a symlink) to list as the archive does; return those that still do not (their paths)."""
    wrong = []
    for parent, names in children(members).items():
        try:
            fd = _open_dir(staging, parent)
        except OSError:
            continue   # (a member that is a mount of one file: not a directory here)
        try:
            if not _reorder(fd, names):
                wrong.append(parent)
        except OSError:
            wrong.append(parent)   # (an order is not worth a failed restore: dirpos checks what needs it)
        finally:
            os.close(fd)
    return wrong


def _open_dir(staging: int, path: str) -> int:
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=staging)
    try:
        for part in path.split("/"):
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _listed(fd: int, names: list[str]) -> list[str]:
    """The entries of directory `fd` that are among `names`, in the order getdents gives them."""
    want = set(names)
    os.lseek(fd, 0, os.SEEK_SET)
    return [n for n in (os.fsdecode(raw) for raw, _ in dirpos.listing(fd)) if n in want]


def _reorder(fd: int, names: list[str]) -> bool:
    """Make directory `fd` list `names` in that order (True when it does); its times stay tar's."""
    st = os.fstat(fd)
    try:
        now = _listed(fd, names)
        if now == names:
            return True
        if len(now) != len(names) or _AWAY in names:
            return False
        # Newest first (it lists the extracted entries reversed): the last one renamed first;
        # else (oldest first) the first one first.
        for order in (names[::-1], names):
            for n in order:
                os.rename(n, _AWAY, src_dir_fd=fd, dst_dir_fd=fd)
                os.rename(_AWAY, n, src_dir_fd=fd, dst_dir_fd=fd)
            if _listed(fd, names) == names:
                return True
        return False
    finally:
        now_st = os.fstat(fd)
        if (now_st.st_atime_ns, now_st.st_mtime_ns) != (st.st_atime_ns, st.st_mtime_ns):
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
