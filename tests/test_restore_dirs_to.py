"""restore's walk to a host file for a rootless tree (engine/restore.py `_Restorer._dirs_to`, used by
host_reach's fallback) hands back fds on the directories on the way and keeps none of its own: the
fd it opened on the file itself was once left open, one a host file, in the root restorer whose
stand-ins fork from it."""

from __future__ import annotations

import os

from engine import restore


class _Mount:
    """Stands for the restorer: `_open_at` opens beneath a directory."""

    def __init__(self, top: str):
        self.top = top

    def _open_at(self, mnt: int, path: str, flags: int) -> int:
        return os.open(os.path.join(self.top, path) if path else self.top, flags)


def test_dirs_to_leaves_no_fd_open(tmp_path):
    os.makedirs(tmp_path / "a" / "b")
    (tmp_path / "a" / "b" / "f").write_text("x")
    before = set(os.listdir("/proc/self/fd"))
    got = restore._Restorer._dirs_to(_Mount(str(tmp_path)), 1, "a/b/f")
    try:
        assert [os.readlink(f"/proc/self/fd/{fd}") for fd in got] == \
            [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    finally:
        for fd in got:
            os.close(fd)
    left = set(os.listdir("/proc/self/fd")) - before
    assert not left, [os.readlink(f"/proc/self/fd/{x}") for x in left]
