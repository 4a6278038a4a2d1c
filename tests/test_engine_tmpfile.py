"""A file made by O_TMPFILE and never linked (CRIU's fd01: tmpfile(3)): its fd keeps __O_TMPFILE and
O_DIRECTORY in its flags, which the image refused ("a bug, please report it") and a reopen cannot
give; restore makes it again by O_TMPFILE in the same directory, with its data, mode and owner."""

from __future__ import annotations

import os

from enginecase import case, py_hold  # noqa: F401  (fixture)

SETUP = py_hold("""
t = os.open("/tmp", os.O_TMPFILE | os.O_RDWR, 0o640)
os.write(t, b"made by O_TMPFILE\\n" * 100); os.lseek(t, 7, os.SEEK_SET); os.fchown(t, 1234, 5678)
os.dup2(t, 10); os.dup2(t, 11); os.close(t)
""")


def test_unlinked_o_tmpfile_file(case):
    before, after = case.roundtrip(SETUP)    # flags, offset, shared description, what the fds read
    line = next(f for f in after.root.fds if f.startswith("10: "))
    assert "#tmpfile1 (deleted)" in line and "flags=20200002" in line and "pos=7" in line, line
    st = os.stat(f"/proc/{after.pid}/fd/10")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777, st.st_size) == (1234, 5678, 0o640, 1800)
    assert os.stat(f"/proc/{after.pid}/fd/11").st_ino == st.st_ino
