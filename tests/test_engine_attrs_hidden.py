"""Inode attributes (chattr i, a, d; the archive references' `attrs`) of files the archive walk
(engine/content.py inode_flags) did not reach before session 34, lost without a word: files beneath
a directory a locked mount covers (a user namespace's copy of its parent's mounts: the clone brings
the locked mount along and the directory comes from another view, content._covered_dirs), and
files of superblocks only detached mounts reach (engine/detached.py). Now kept. Deleted files held
open (ghosts), whose archive holds no attributes, are refused before the stop instead."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import enginecase
from enginecase import case  # noqa: F401  (fixture)


def _need_chattr() -> None:
    if not shutil.which("chattr"):
        pytest.skip("chattr (e2fsprogs) is not installed")


def _lsattr(pid: int, path: str) -> str:
    out = subprocess.run(["nsenter", "-t", str(pid), "-m", "lsattr", "-d", path],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def _unlock(pid: int, paths: list[str]) -> None:
    """Clear the attributes again (a tmpfs goes with its namespace, but an immutable file of a
    restored tree must not stop anything from removing it)."""
    for p in paths:
        subprocess.run(["nsenter", "-t", str(pid), "-m", "chattr", "-i", "-a", p], capture_output=True)


# The held process in a user namespace's copy of the container's mounts: /mnt/data and the tmpfs
# on its directory sub are locked together there (dump's clone of /mnt/data brings the cover along,
# and takes sub from the bind /mnt/subview, which shows it uncovered: engine/nscopy.py _covered_views).
COVERED = """mkdir /mnt/data; mount -t tmpfs data /mnt/data
mkdir /mnt/data/sub /mnt/data/sub/d; echo hidden > /mnt/data/sub/f; echo deep > /mnt/data/sub/d/g
chattr +i /mnt/data/sub/f; chattr +a /mnt/data/sub/d/g; chattr +d /mnt/data/sub/d
mkdir /mnt/subview; mount --bind /mnt/data/sub /mnt/subview
mount -t tmpfs over /mnt/data/sub; echo top > /mnt/data/sub/t
""" + enginecase.py_hold("import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000 | 0x00020000) == 0\n")


def _attrs_of(doc: dict, source: str) -> dict[str, int]:
    """{path: flags} of the `attrs` of the archives of the superblock mounted with `source`."""
    (sb,) = [sb for sb in doc["superblocks"].values() if sb["source"] == source and sb["fstype"] == "tmpfs"]
    return {a["root"].rstrip("/") + r["path"]: r["flags"] for a in sb.get("archives") or () for r in a.get("attrs") or ()}


def test_attributes_beneath_a_locked_cover_kept(case):
    """chattr +i, +a, +d of files beneath a directory a locked tmpfs covers: kept in the image and set
    again at restore (seen through the restored bind of that directory)."""
    _need_chattr()
    pid = case.start(COVERED, host_pidns=True)
    before = enginecase.take(pid)
    images = case.new_images_dir()
    case.dump(pid, images)
    got = _attrs_of(enginecase.load_manifest(images), "data")
    assert got == {"/sub/f": 0x10, "/sub/d": 0x40, "/sub/d/g": 0x20}, got
    restored = case.restore(images)
    try:
        enginecase.assert_same(before, enginecase.take(restored))
        got = {p: _lsattr(restored, f"/mnt/subview/{p}") for p in ("f", "d", "d/g")}
        assert "i" in got["f"] and "a" in got["d/g"] and "d" in got["d"], got
    finally:
        _unlock(restored, ["/mnt/subview/f", "/mnt/subview/d/g"])
