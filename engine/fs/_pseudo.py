"""Shared part of pseudo filesystem types whose files are made by users but cannot be dumped
(bpf pins, hugetlbfs files): dump takes only an empty one, made again empty at restore."""

from __future__ import annotations

import errno
import os
from engine.records import record

from engine.fs import FsError, FsType


@record(frozen=True)
class EmptyOnly(FsType):
    """A pseudo filesystem dump accepts only while it holds nothing (what it held is not dumpable)."""

    what: str = "files"
    # Names every new instance has (bpf's preloaded iterators): they are made again.
    fresh_names: frozenset[str] = frozenset()

    def wants_probe(self) -> bool:
        return True

    def probe(self, sid: str, mid: int, mount_fd: int, plan) -> None:
        names = [n for n in os.listdir(f"/proc/self/fd/{mount_fd}") if n not in self.fresh_names]
        if names:
            mp = plan.mounts_by_id[mid].mountpoint
            raise FsError(errno.EOPNOTSUPP, f"mount {mid} ({mp}) on {self.name}: it holds {self.what} "
                                            f"({', '.join(sorted(names)[:3])}...), which cannot be dumped; "
                                            f"declare it with --external mnt[{mp}]:KEY, or empty it")
