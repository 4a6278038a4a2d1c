"""zdtm/sbguard.py: superblocks the kernel keeps after their tree died, on real throwaway trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from zdtm import sbguard

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare (a tree in its own mount namespace)")


def _tree(tmp_path, source="sbguard-test"):
    """A process in its own mount namespace with a tmpfs of its own at tmp_path/mnt."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          f"mount -t tmpfs {source} {mnt} && echo > {mnt}/f && exec sleep 60"],
                         stdin=subprocess.DEVNULL)
    # Ready once its file is there (the mount alone shows before `echo` wrote it).
    deadline = time.monotonic() + 60
    while p.poll() is None and not os.path.exists(f"/proc/{p.pid}/root{mnt}/f"):
        assert time.monotonic() < deadline, "the tree did not mount its tmpfs"
        time.sleep(0.02)
    assert p.poll() is None, "the tree failed to mount its tmpfs"
    return p, str(mnt)


def _kill(p):
    p.kill()
    p.wait()


def test_a_superblock_that_goes_with_its_tree_is_no_leak(tmp_path):
    p, mnt = _tree(tmp_path)
    w = sbguard.Watch()
    try:
        w.add_tree(p.pid)
        assert [sb.source for sb in w.live.values()] == ["sbguard-test"]  # the host's are not watched
        _kill(p)
        started = time.monotonic()
        assert w.leaked(grace=60) == []   # (a grace far above the bound: waiting it out cannot pass)
        assert time.monotonic() - started < 30, "waited for an unmount the kernel had reported"
    finally:
        w.close()
        if p.poll() is None:
            _kill(p)


def test_a_superblock_alive_that_nothing_holds_is_named(tmp_path):
    p, mnt = _tree(tmp_path)
    w = sbguard.Watch()
    # The test's own fd keeps the superblock: seen from a made-up /proc without it, nothing
    # holds it, as when the kernel alone keeps it.
    fd = os.open(f"/proc/{p.pid}/root{mnt}/f", os.O_RDONLY)
    try:
        w.add_tree(p.pid)
        _kill(p)
        assert w.leaked(grace=1) == [], "a superblock a process holds is not a leak"
        empty = tmp_path / "proc"
        empty.mkdir()
        found = w.leaked(grace=0.5, proc=str(empty))
        assert [sb.source for sb in found] == ["sbguard-test"]
        assert f"(tmpfs sbguard-test, at {mnt}): still alive after its tree died" in sbguard.describe(found)
    finally:
        os.close(fd)
        w.close()
        if p.poll() is None:
            _kill(p)
