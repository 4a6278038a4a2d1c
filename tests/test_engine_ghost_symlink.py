"""A symlink a process holds by an O_PATH fd after unlinking it (CRIU's symlink01): archived as a
symlink of the same target and owner (tar alone would store the magic link's target, the deleted
path) and made again as the fd's ghost, unlinked again after restore."""

from __future__ import annotations

import os
import stat

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

SETUP = """
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/d; touch /mnt/t/d/file
ln -s /mnt/t/d/file /mnt/t/d/link; chown -h 123:456 /mnt/t/d/link
""" + py_hold("""
f = os.open("/mnt/t/d/link", os.O_PATH | os.O_NOFOLLOW); os.unlink("/mnt/t/d/link"); os.dup2(f, 10); os.close(f)
""")


def test_deleted_symlink_held_by_an_o_path_fd(case):
    state = case.roundtrip(SETUP, check="ls -A /mnt/t/d")[-1]
    f = grab_fd(state.pid, 10)
    try:
        st = os.fstat(f)
        assert (stat.S_ISLNK(st.st_mode), st.st_nlink, st.st_uid, st.st_gid) == (True, 0, 123, 456)
        assert os.readlink("", dir_fd=f) == "/mnt/t/d/file"
        assert os.readlink(f"/proc/{state.pid}/fd/10") == "/mnt/t/d/link (deleted)"
    finally:
        os.close(f)
