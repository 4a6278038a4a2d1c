"""Nodes on a tmpfs that only fds reach (lazily unmounted, no directory of it held): dump archives
the node itself (engine/detached.py `archive_invisible`). A device node used to be opened and read
as a file: it came back as a regular file holding what the device gave (silently), and a node of
/dev/zero would have been read without end while the tree was stopped; a symlink an O_PATH fd
holds was opened through (a dangling one failed the dump once the tree was stopped)."""

from __future__ import annotations

import os
import stat

import pytest

from enginecase import case, py_hold, take  # noqa: F401  (fixture)


def test_device_nodes_kept_as_nodes(case):
    """fds on /dev/null's and /dev/zero's nodes made on a tmpfs lazily unmounted since: after C/R
    the fds are on character devices of the same numbers again."""
    pid = case.start("mkdir -p /mnt/t; mount -t tmpfs t /mnt/t; mknod /mnt/t/null c 1 3; mknod /mnt/t/zero c 1 5\n"
                     "exec 5</mnt/t/null 6</mnt/t/zero; umount -l /mnt/t\nhold\n")
    before = take(pid)
    restored = case.cr(pid)
    after = take(restored)
    assert [x for x in before.root.fds if x.startswith(("5:", "6:"))] == \
        [x for x in after.root.fds if x.startswith(("5:", "6:"))]
    for fd, minor in ((5, 3), (6, 5)):
        st = os.stat(f"/proc/{restored}/fd/{fd}")
        assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, minor), \
            (fd, oct(st.st_mode), st.st_rdev)


def test_symlink_held_by_an_o_path_fd_kept(case):
    """An O_PATH fd on a (dangling) symlink of a tmpfs lazily unmounted since: after C/R the fd is on
    a symlink with the same target again."""
    pid = case.start("mkdir -p /mnt/t; mount -t tmpfs t /mnt/t; ln -s nowhere /mnt/t/l\n" + py_hold("""
fd = os.open("/mnt/t/l", os.O_PATH | os.O_NOFOLLOW); os.dup2(fd, 5); os.close(fd)
assert os.system("umount -l /mnt/t") == 0
"""))
    before = take(pid)
    restored = case.cr(pid)
    after = take(restored)
    assert [x for x in before.root.fds if x.startswith("5:")] == [x for x in after.root.fds if x.startswith("5:")]
    fd = os.open(f"/proc/{restored}/fd/5", os.O_PATH | os.O_CLOEXEC)
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode) and os.readlink("", dir_fd=fd) == "nowhere"
    finally:
        os.close(fd)


def test_climb_leaves_no_fd_when_a_step_fails(tmp_path, monkeypatch):
    """detached.climb (anchor's and archive_invisible's walk up ".."): its fixed point and steps;
    a step that fails (a directory removed meanwhile, as precheck may meet on the running tree)
    leaves none of its fds open."""
    from engine import detached
    (tmp_path / "a" / "b").mkdir(parents=True)
    st = os.stat("/")
    top, steps = detached.climb(os.open(tmp_path / "a" / "b", os.O_PATH | os.O_DIRECTORY), os.O_PATH)
    try:
        here = os.fstat(top)
        assert steps >= 2 and (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)
    finally:
        os.close(top)
    real_open, calls = os.open, []

    def failing(path, flags, mode=0o777, *, dir_fd=None):
        if path == "..":
            calls.append(dir_fd)
            if len(calls) == 2:
                raise FileNotFoundError(2, "removed meanwhile")
        return real_open(path, flags, mode, dir_fd=dir_fd)
    before = sorted(os.listdir("/proc/self/fd"))
    start = os.open(tmp_path / "a" / "b", os.O_PATH | os.O_DIRECTORY)
    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(FileNotFoundError):
        detached.climb(start, os.O_PATH)
    monkeypatch.undo()
    assert len(calls) == 2 and sorted(os.listdir("/proc/self/fd")) == before
