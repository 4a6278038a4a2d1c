"""Deleted files whose names hold what shells, sed and tar listings treat specially (CRIU's
unlink_fstat04: a newline, quotes, a backslash, a percent sign): archived alone under that name
(tar's --transform replacement escaped, its listing read C-quoted) and made again under it, the
fd and the mount root showing the same deleted names after restore."""

from __future__ import annotations

import os

from enginecase import case, grab_fd, py_hold  # noqa: F401  (fixture)

NAME = "test\\file'\n\"un%link&fstat,00"

# fd 10: a file opened, then unlinked; /mnt/f: a bind of a file removed since (root `//deleted`).
SETUP = "mkdir -p /mnt/t; mount -t tmpfs t /mnt/t; touch /mnt/f\n" + py_hold(f"""
import subprocess
name = {NAME!r}
fd = os.open("/mnt/t/" + name, os.O_RDWR | os.O_CREAT, 0o640); os.write(fd, b"kept data\\n")
os.unlink("/mnt/t/" + name); os.dup2(fd, 10); os.close(fd)
with open("/mnt/t/b" + name, "w") as f:
    f.write("bound\\n")
subprocess.run(["mount", "--bind", "/mnt/t/b" + name, "/mnt/f"], check=True)
os.unlink("/mnt/t/b" + name)
""")

CHECK = "readlink /proc/1/fd/10 | od -c | head -3; findmnt -n -o FSROOT /mnt/f | od -c | head -3; cat /mnt/f; ls -A /mnt/t"


def test_deleted_names_with_newline_quotes_and_backslash(case):
    before, after = case.roundtrip(SETUP, check=CHECK)
    assert os.readlink(f"/proc/{after.pid}/fd/10") == f"/mnt/t/{NAME} (deleted)"
    assert "bound" in after.snap.check_output, after.snap.check_output
    fd = grab_fd(after.pid, 10)
    try:
        assert os.pread(fd, 64, 0) == b"kept data\n"
    finally:
        os.close(fd)
