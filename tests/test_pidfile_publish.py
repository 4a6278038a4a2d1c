"""engine/pidfile.py publish: the pid file appears whole, by a link, never replacing one, not fsync'ed."""

from __future__ import annotations

import os

import pytest

from engine import pidfile


def test_published_whole_and_never_replaced(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    path = str(tmp_path / "pid")
    pidfile.check(path)
    pidfile.publish(path, 1234)
    assert open(path).read() == "1234\n"
    assert sorted(os.listdir(tmp_path)) == ["pid"]   # the temporary file is gone
    # A crash of the host ends the tree the file names: waiting for the disk bought nothing.
    assert synced == []
    with pytest.raises(pidfile.PidfileError, match="writing pid file"):
        pidfile.publish(path, 99)   # link(2) never replaces a file
    assert open(path).read() == "1234\n" and sorted(os.listdir(tmp_path)) == ["pid"]
