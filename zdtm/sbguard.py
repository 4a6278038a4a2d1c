"""Superblocks of a test's trees that the kernel keeps after the trees died.

A superblock the tree made (one the host's mount table does not show) goes when the tree
does: its namespace's mounts are unmounted as its last process exits. One that stays,
while no mount table shows it and no process holds it (an fd, cwd or root on it), is
kept by the kernel alone: a mount no namespace shows, kept connected by a file opened
through it that a superblock of the same chain keeps (restore's parked mounts,
engine/parking.py: a loop device's backing file, fe084fc), a daemon serving it that
holds a file beneath it. Nothing outside the kernel frees it: it stays until reboot.

`Watch` puts an inotify watch on the root of every such mount of a live tree; the kernel
reports IN_UNMOUNT for each watched inode when its superblock shuts down. `leaked()`,
once the trees are gone, waits up to a grace period for those reports and names the
superblocks that got none and nothing holds. Only trees whose /proc entry is ours can be
watched (the ns flavor, the engine tests): a guest's pids are not this machine's.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time
from dataclasses import dataclass

from engine import kernel
from zdtm import holders

_libc = ctypes.CDLL(None, use_errno=True)
IN_DELETE_SELF, IN_UNMOUNT, IN_IGNORED = 0x400, 0x2000, 0x8000
_EVENT = struct.Struct("iIII")
# Types with one superblock the kernel itself keeps (pinned while anything is registered in it, or
# internal): mounting one shows the same superblock, which never goes with a tree.
KERNEL_KEPT = frozenset({"nsfs", "pidfs", "debugfs", "tracefs", "securityfs", "configfs", "pstore", "efivarfs"})


@dataclass(frozen=True)
class Sb:
    """A watched superblock: its device, type and source (as mountinfo shows them) and where it was seen."""

    dev: int
    fstype: str
    source: str
    where: str

    def describe(self) -> str:
        return (f"superblock {os.major(self.dev)}:{os.minor(self.dev)} ({self.fstype} {self.source}, at "
                f"{self.where}): still alive after its tree died, with no mount table showing it and no "
                "process holding it; the kernel keeps it (and the mounts holding it) until the machine reboots")


def _mounts(text: str):
    """(device, mount point, fstype, source) of each mount of a mountinfo text."""
    for m in holders.mounts(text):
        yield os.makedev(m.major, m.minor), m.mountpoint, m.fstype, m.source


def held(proc: str = "/proc") -> set[int]:
    """Devices some process's mount table shows or some process holds (an fd, cwd or root on it)."""
    found = holders.scan(proc)
    return found.devs | {dev for text in found.mountinfos for dev, *_ in _mounts(text)}


class Watch:
    """The superblocks of the trees given to `add_tree` that the host's mount table does not show."""

    def __init__(self, host_mountinfo: str = "/proc/self/mountinfo"):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.host = {dev for dev, *_ in _mounts(holders.read_text(host_mountinfo) or "")}
        self.live: dict[int, Sb] = {}   # watch descriptor -> superblock

    def add_tree(self, pid: int) -> None:
        """Watch every superblock tree `pid` shows that the host does not (each once)."""
        self._drain()  # (a device number freed meanwhile may be a new superblock's now)
        watched = {sb.dev for sb in self.live.values()}
        for dev, mountpoint, fstype, source in _mounts(holders.read_text(f"/proc/{pid}/mountinfo") or ""):
            if dev in self.host or dev in watched or fstype in KERNEL_KEPT:
                continue
            path = f"/proc/{pid}/root{mountpoint}"
            wd = _libc.inotify_add_watch(self.fd, path.encode(), IN_DELETE_SELF)
            if wd < 0:
                continue  # covered, or gone meanwhile: another mount point of it may do
            try:
                if kernel.stat_cached(path)[0] != dev:
                    continue  # a mount covers this one: its root is someone else's
            except OSError:
                continue
            self.live[wd] = Sb(dev, fstype, source, mountpoint)
            watched.add(dev)

    def _drain(self) -> None:
        buf = ctypes.create_string_buffer(1 << 16)
        while True:
            n = _libc.read(self.fd, buf, len(buf))
            if n <= 0:
                return
            off = 0
            while off < n:
                wd, mask, _, length = _EVENT.unpack_from(buf.raw, off)
                off += _EVENT.size + length
                if mask & (IN_UNMOUNT | IN_IGNORED):
                    self.live.pop(wd, None)

    def leaked(self, grace: float = 20.0, proc: str = "/proc") -> list[Sb]:
        """The watched superblocks still alive after up to `grace` s that nothing but the kernel holds."""
        deadline = time.monotonic() + grace
        self._drain()
        while self.live:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([self.fd], [], [], min(left, 0.5))
            self._drain()
            if self.live and not {sb.dev for sb in self.live.values()} - held(proc):
                break   # every one left is held: nothing to wait for
        holding = held(proc) if self.live else set()
        return [sb for sb in self.live.values() if sb.dev not in holding]

    def close(self) -> None:
        """Drop the watches."""
        os.close(self.fd)
        self.live.clear()


def describe(found: list[Sb]) -> str:
    """One line per leaked superblock."""
    return "\n".join(sb.describe() for sb in found)
