"""Inode attributes (chattr i, a, d; the archive references' `attrs`) of files the archive walk
(engine/content.py inode_flags) did not reach before session 34, lost without a word: files beneath
a directory a locked mount covers (a user namespace's copy of its parent's mounts: the clone brings
the locked mount along and the directory comes from another view, content._covered_dirs), and
files of superblocks only detached mounts reach (engine/detached.py). Now kept. Deleted files held
open (ghosts), whose archive holds no attributes, are refused before the stop instead."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
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


# FS_IOC_SETFLAGS through an fd (chattr opens no magic link: O_NOFOLLOW)
_SETFLAGS = "python3 -c 'import fcntl, os, struct; fcntl.ioctl({fd}, 0x40086602, struct.pack(\"<iI\", {flag}, 0))'\n"
GHOSTS = {
    # a file unlinked while open, then made append-only through the fd
    "fd": ("echo data > /run/t/f; exec 3<>/run/t/f; rm /run/t/f\n" + _SETFLAGS.format(fd=3, flag=0x20),
           r"process \d+ fd 3 \(/run/t/f \(deleted\)\)", "a"),
    # a directory removed while the cwd, then made nodump
    "cwd": ("mkdir /run/t/d; cd /run/t/d; rmdir /run/t/d\n" + _SETFLAGS.format(fd='os.open(\".\", 0)', flag=0x40),
            r"process \d+ cwd \(/run/t/d \(deleted\)\)", "d"),
    # a file bind whose file was unlinked (the mount's root), then made immutable through the bind
    "root": ("echo data > /run/t/f; touch /run/bf; mount --bind /run/t/f /run/bf; rm /run/t/f; chattr +i /run/bf\n",
             r"mount \d+ \(/run/bf\): its root /f", "i"),
}


@pytest.mark.parametrize("kind", sorted(GHOSTS))
def test_deleted_file_with_attributes_refused_before_the_stop(case, kind):
    """A deleted file or directory with chattr attributes that restore would make again from its own
    archive: refused before the stop, naming it and the attributes (they were lost before)."""
    _need_chattr()
    setup, where, letters = GHOSTS[kind]
    pid = case.start(enginecase.STOP_WATCH + "mkdir /run/t; mount -t tmpfs t /run/t\n" + setup + "hold\n")
    images = case.new_images_dir()
    try:
        r = enginecase.mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS)
        assert r.returncode == 2, r.stderr
        assert re.fullmatch(rf"mntcr dump: {where}: deleted, with inode attributes \(chattr \+{letters}\) restore "
                            rf"cannot set on a deleted file: clear them \(chattr -{letters} through its /proc/PID "
                            r"link\) or let the file go before dumping\n", r.stderr), r.stderr
        assert not os.path.exists(images)
        assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
    finally:
        _unlock(pid, ["/run/bf"] if kind == "root" else [])


def test_deleted_name_of_a_file_with_another_name_keeps_its_attributes(case):
    """A deleted name of a file that keeps another name (restore links it there again: no archive of
    its own): the attributes come back with that name's (not refused)."""
    _need_chattr()
    pid = case.start("mkdir /run/t; mount -t tmpfs t /run/t\necho data > /run/t/a; ln /run/t/a /run/t/b\n"
                     "exec 3</run/t/b; rm /run/t/b; chattr +a /run/t/a\nhold\n")
    before = enginecase.take(pid)
    restored = case.cr(pid)
    try:
        enginecase.assert_same(before, enginecase.take(restored))
        assert "a" in _lsattr(restored, "/run/t/a")
        assert os.readlink(f"/proc/{restored}/fd/3") == "/run/t/b (deleted)"
    finally:
        _unlock(restored, ["/run/t/a"])


DETACHED = {
    # only a detached mount reaches the tmpfs (a directory held: its whole tree is archived)
    "alone": "mkdir /mnt/t; mount -t tmpfs t /mnt/t\n",
    # a visible bind shows part of it (/mnt/t/vis): the rest only the detached mount reaches
    "beyond": "mkdir /mnt/t /mnt/v; mount -t tmpfs t /mnt/t; mkdir /mnt/t/vis; mount --bind /mnt/t/vis /mnt/v\n",
}


@pytest.mark.parametrize("kind", sorted(DETACHED))
def test_attributes_of_files_only_a_detached_mount_reaches_kept(case, kind):
    """chattr +i, +a, +d of files of a tmpfs only a lazily unmounted mount reaches (the process holds
    a directory of it): set again at restore, seen through the restored fd (were lost)."""
    _need_chattr()
    pid = case.start(DETACHED[kind] + "mkdir /mnt/t/d; echo i > /mnt/t/d/f; echo a > /mnt/t/d/g\n"
                     "chattr +i /mnt/t/d/f; chattr +a /mnt/t/d/g; chattr +d /mnt/t/d\n"
                     "exec 5</mnt/t/d; umount -l /mnt/t\nhold\n")
    restored = case.cr(pid)
    base = f"/proc/{restored}/fd/5"
    try:
        got = {p: _lsattr_at(f"{base}/{p}") for p in (".", "f", "g")}
        assert "d" in got["."] and "i" in got["f"] and "a" in got["g"], got
    finally:
        for p in ("f", "g"):
            subprocess.run(["chattr", "-i", "-a", f"{base}/{p}"], capture_output=True)


def _lsattr_at(path: str) -> str:
    out = subprocess.run(["lsattr", "-d", path], capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def test_attributes_of_a_file_only_a_detached_mount_reaches_kept(case):
    """The same with only a file of the detached tmpfs held (archived file by file): its chattr +a
    set again on the restored file."""
    _need_chattr()
    pid = case.start("mkdir /mnt/t; mount -t tmpfs t /mnt/t; echo a > /mnt/t/g; chattr +a /mnt/t/g\n"
                     "exec 5>>/mnt/t/g; umount -l /mnt/t\nhold\n")
    restored = case.cr(pid)
    fd = os.open(f"/proc/{restored}/fd/5", os.O_RDONLY)
    try:
        flags = struct.unpack_from("<i", fcntl.ioctl(fd, 0x80086601, bytes(8)))[0]   # FS_IOC_GETFLAGS
        assert flags & 0x20, hex(flags)
        fcntl.ioctl(fd, 0x40086602, struct.pack("<iI", flags & ~0x30, 0))
    finally:
        os.close(fd)
