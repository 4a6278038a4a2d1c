"""A device node a process holds open after unlinking it (CRIU's deleted_dev): archived as a node
(its device numbers, no content) and made again as the fd's ghost, unlinked again after restore."""

from __future__ import annotations

import os
import stat

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

SETUP = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mknod -m 600 /mnt/t/zero c 1 5
""" + py_hold("""
f = os.open("/mnt/t/zero", os.O_RDWR); os.unlink("/mnt/t/zero"); os.dup2(f, 10); os.close(f)
""")


def test_deleted_device_node_held_open(case):
    state = case.roundtrip(SETUP, check="ls -A /mnt/t")[-1]
    f = grab_fd(state.pid, 10)
    try:
        st = os.fstat(f)
        assert (stat.S_ISCHR(st.st_mode), stat.S_IMODE(st.st_mode), st.st_nlink) == (True, 0o600, 0)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 5)
        assert os.read(f, 4) == b"\0\0\0\0"
        assert os.readlink(f"/proc/{state.pid}/fd/10") == "/mnt/t/zero (deleted)"
    finally:
        os.close(f)
