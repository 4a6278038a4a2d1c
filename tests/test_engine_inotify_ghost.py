"""inotify watches on a file unlinked while a process holds it open (CRIU's inotify00): the watch
is added again on the restored ghost of that file, so a change made through the held fd after
restore reaches the watch; a watch on a deleted file only a mapping holds is refused naming the watch."""

from __future__ import annotations

import os
import struct

import pytest

from enginecase import CRError, case, grab_fd, py_hold  # noqa: F401  (fixture)

IN_MODIFY = 0x2


def _setup(keep_open: bool) -> str:
    return """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d; echo data > /mnt/t/d/f
""" + py_hold(f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
i = libc.inotify_init1(os.O_NONBLOCK)
f = os.open("/mnt/t/d/f", os.O_RDWR)
assert libc.inotify_add_watch(i, b"/mnt/t/d", 0x2) == 1 and libc.inotify_add_watch(i, b"/mnt/t/d/f", 0x2) == 2
os.unlink("/mnt/t/d/f")
try:
    os.read(i, 4096)   # (nothing: no IN_MODIFY yet, IN_ATTRIB is not watched)
except BlockingIOError:
    pass
os.dup2(i, 10); os.close(i)
if {keep_open}:
    os.dup2(f, 11)
else:
    libc.mmap.restype = ctypes.c_void_p   # (libc's: Python's mmap keeps an fd; the file lives on, held by no fd)
    assert libc.mmap(None, 4096, 1, 1, f, 0) not in (None, ctypes.c_void_p(-1).value)
os.close(f)
""")


def test_watch_on_a_file_unlinked_while_open(case):
    state = case.roundtrip(_setup(True), check="ls -A /mnt/t/d")[-1]
    ino, f = grab_fd(state.pid, 10), grab_fd(state.pid, 11)
    try:
        assert os.fstat(f).st_nlink == 0
        os.pwrite(f, b"changed", 0)
        ev, got, off = os.read(ino, 4096), [], 0
        while off < len(ev):
            wd, mask, _cookie, n = struct.unpack_from("iIII", ev, off)
            got.append((wd, mask))
            off += 16 + n
        # (the directory's watch sees it too, the unlinked file keeping its parent, as before dump)
        assert (2, IN_MODIFY) in got, got
    finally:
        os.close(ino)
        os.close(f)


def test_watch_on_a_deleted_file_only_mapped_refused(case):
    pid = case.start(_setup(False))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert "inotify watch 2 on /d/f, a deleted file no fd of the tree holds open: not supported" in str(err.value)


GONE_CWD = py_hold("""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("/tmp/w/gone")
i = libc.inotify_init1(os.O_NONBLOCK)
assert libc.inotify_add_watch(i, b"/tmp/w/gone", 0x20) == 1   # IN_OPEN
os.chdir("/tmp/w/gone"); os.rmdir("/tmp/w/gone")   # (in use: no IN_DELETE_SELF, the watch stays)
os.dup2(i, 10); os.close(i)
""")


def test_watch_on_a_directory_removed_while_the_cwd(case):
    """A watch on a directory removed while it is the process's cwd (no fd holds it): added again
    through the ghost of the restored cwd (refused before session 34: "a deleted file no fd of the
    tree holds open"): an open of the restored cwd reaches it."""
    state = case.roundtrip(GONE_CWD)[-1]
    ino = grab_fd(state.pid, 10)
    try:
        with open(f"/proc/self/fdinfo/{ino}") as f:
            watched = [int(x.split(":")[1], 16) for line in f if line.startswith("inotify wd:")
                       for x in line.split() if x.startswith("ino:")]
        assert watched == [os.stat(f"/proc/{state.pid}/cwd").st_ino], watched
        os.close(os.open(f"/proc/{state.pid}/cwd", os.O_RDONLY | os.O_DIRECTORY))
        wd, mask, _cookie, _n = struct.unpack_from("iIII", os.read(ino, 4096))
        assert (wd, mask & 0x20) == (1, 0x20)
    finally:
        os.close(ino)
