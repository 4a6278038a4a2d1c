"""Every watch fdinfo lists reaches dump's record of an inotify fd, or the dump is refused: a line
with a file handle is located by it, one the kernel printed without a handle (an inode it could
not encode one for) by its inode number, and a line of a form the parser does not know refuses
the fd instead of leaving the watch out (the image would restore an inotify fd watching less)."""

from __future__ import annotations

import os

import pytest

from engine.fds import FdError, inotify

_HEAD = "pos:\t0\nflags:\t02004000\nmnt_id:\t15\nino:\t1038\n"
_WITH = ("inotify wd:2 ino:1f9dc sdev:26 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:fe "
         "f_handle:dcf9010000000000\n")
_WITHOUT = "inotify wd:3 ino:25 sdev:28 mask:80c ignored_mask:0 \n"


def _fdinfo(tmp_path, text: str) -> int:
    os.makedirs(tmp_path / "7" / "fdinfo")
    (tmp_path / "7" / "fdinfo" / "6").write_text(_HEAD + text)
    return os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)


@pytest.fixture
def located(monkeypatch):
    """What each lookup was asked, answered with a path of its own."""
    asked = []

    def by_handle(hostproc, mounts, sdev, htype, handle, ino=None):
        asked.append(("handle", sdev, htype, handle.hex(), ino))
        return {"abs": "/sys/fs/cgroup/system.slice/cgroup.events", "mnt": 40}

    def by_ino(mounts, dev, rdev, ino):
        asked.append(("ino", dev, rdev, ino))
        return {"abs": "/etc/localtime", "mnt": 30}

    monkeypatch.setattr(inotify, "locate_handle", by_handle)
    monkeypatch.setattr(inotify, "_by_ino", by_ino)
    monkeypatch.setattr(inotify, "_queued_of", lambda pid, fd: 0)   # (process 7 is this fake /proc's)
    return asked


def test_watches_with_and_without_handle_are_all_kept(tmp_path, located):
    hostproc = _fdinfo(tmp_path, _WITH + _WITHOUT)
    try:
        got = inotify._in_ns(hostproc, 7, 6, [])["watches"]
    finally:
        os.close(hostproc)
    assert got == [{"wd": 2, "mask": 2, "abs": "/sys/fs/cgroup/system.slice/cgroup.events", "mnt": 40},
                   {"wd": 3, "mask": 0x80c, "abs": "/etc/localtime", "mnt": 30}]
    assert located == [("handle", 0x26, 0xfe, "dcf9010000000000", 0x1f9dc),
                       ("ino", "0:40", os.makedev(0, 40), 0x25)]


def test_unreached_watch_without_handle_is_refused_not_looked_for_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setattr(inotify, "_by_ino", lambda *a: None)
    monkeypatch.setattr(inotify, "_queued_of", lambda pid, fd: 0)
    hostproc = _fdinfo(tmp_path, _WITHOUT)
    try:
        seen = inotify._in_ns(hostproc, 7, 6, [])["watches"]
    finally:
        os.close(hostproc)
    assert seen[0]["find"] is None and "no visible mount reaches" in seen[0]["error"]

    class Fd:
        where, elsewhere = "process 7 fd 6 (anon_inode:inotify)", []
    with pytest.raises(FdError, match=r"process 7 fd 6 \(anon_inode:inotify\): inotify watch 3 is on device 0:40"):
        inotify._located(Fd(), seen)


def test_line_of_unknown_form_refuses_the_fd(tmp_path, located):
    hostproc = _fdinfo(tmp_path, _WITH + "inotify wd:4 ino:25 sdev:28 flags:2\n")
    try:
        with pytest.raises(FdError, match=r"process 7 fd 6: an inotify watch line of an unknown form"):
            inotify._in_ns(hostproc, 7, 6, [])
    finally:
        os.close(hostproc)
