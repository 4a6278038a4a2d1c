"""Inode attributes (chattr i, a) of files a process held open for writing before the attribute was
set: the kernel checks them at open only, so the dumped tree held them; restore sets the attributes
once every process holds its fds (engine/restore.py set_attrs). Before, they were set before the
processes opened their files, and the open of each failed restore ("Operation not permitted")."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from enginecase import case  # noqa: F401  (fixture)

SETUP = """mkdir -p /run/t; mount -t tmpfs t /run/t
echo a > /run/t/log; echo i > /run/t/frozen; mkdir /run/t/d
exec 3>/run/t/log 4<>/run/t/frozen
chattr +a /run/t/log; chattr +i /run/t/frozen; chattr +a /run/t/d
hold
"""


def test_files_held_for_writing_keep_attributes_set_after(case):
    if not shutil.which("chattr"):
        pytest.skip("chattr (e2fsprogs) is not installed")
    pid = case.start(SETUP)
    images = case.new_images_dir()
    case.dump(pid, images)
    new = case.restore(images)
    for fd, path, flags in ((3, "/run/t/log", "a"), (4, "/run/t/frozen", "i")):
        with open(f"/proc/{new}/fdinfo/{fd}") as f:
            mode = int(f.read().split("flags:")[1].split()[0], 8)
        assert mode & 3 in (1, 2), (fd, oct(mode))   # (held for writing again)
        out = subprocess.run(["nsenter", "-t", str(new), "-m", "lsattr", "-d", path],
                             capture_output=True, text=True, check=True).stdout
        assert flags in out.split()[0], out
    out = subprocess.run(["nsenter", "-t", str(new), "-m", "lsattr", "-d", "/run/t/d"],
                         capture_output=True, text=True, check=True).stdout
    assert "a" in out.split()[0], out
