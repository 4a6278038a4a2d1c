"""Leak guard: the host's mounts at session start against the host's mounts at session end.

A mount is identified by (mount id, device, root, mountpoint): a mount id the
kernel reused for another mount counts as new. Any mount present at the end
and not at the start is a leak; the session fails and names it. The
comparison works on mountinfo text, so it can be tested on made-up tables.
"""

from __future__ import annotations

from engine import mountinfo


def _key(m: mountinfo.Mount) -> tuple:
    return (m.mnt_id, m.major, m.minor, m.root, m.mountpoint)


def leaked(start_text: str, end_text: str) -> list[mountinfo.Mount]:
    """Mounts in `end_text` that were not in `start_text` (both mountinfo texts)."""
    start = {_key(m) for m in mountinfo.parse(start_text)}
    return [m for m in mountinfo.parse(end_text) if _key(m) not in start]


def describe(mounts: list[mountinfo.Mount]) -> str:
    """One line per leaked mount: where, what, and how to remove it."""
    return "\n".join(f"leaked mount: {m.mountpoint} ({m.fstype} {m.source}, mount id {m.mnt_id}); "
                     f"remove with: umount -l {m.mountpoint}" for m in mounts)


class Guard:
    """Records a mountinfo file at creation; `check()` returns what leaked since."""

    def __init__(self, path: str = "/proc/self/mountinfo"):
        self.path = path
        self.start = self._read()

    def _read(self) -> str:
        with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()

    def check(self) -> list[mountinfo.Mount]:
        return leaked(self.start, self._read())
