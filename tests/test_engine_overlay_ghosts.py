"""Files unlinked through an overlay while open, and a directory of it removed while it is the cwd
(engine/fs/__init__.py `ghosts_through`): restore makes each again through the restored overlay,
opens it and unlinks it again, so the fds read the same data and the upper layer has the same
whiteouts. The overlay's link counts are its layers' (a lower file still has its name beneath
the whiteout): dump goes by the "(deleted)" name, not by st_nlink."""

from __future__ import annotations

import pytest

from enginecase import case  # noqa: F401  (fixture)

SETUP = """
mkdir /run/l; mount -t tmpfs l /run/l; cd /run/l; mkdir -p lower/gone upper work merged
echo lower-only > lower/lowonly
mount -t overlay o -o lowerdir=/run/l/lower,upperdir=/run/l/upper,workdir=/run/l/work /run/l/merged
echo upper-only > merged/uponly
exec 7<merged/lowonly 8<>merged/uponly
rm merged/lowonly merged/uponly
cd merged/gone; rmdir /run/l/merged/gone
hold
"""

CHECK = """
ls -l /proc/1/fd/7 /proc/1/fd/8 /proc/1/cwd | sed 's/.* -> //'
cat /proc/1/fd/7 /proc/1/fd/8
stat -c '%n %F %t:%T' /run/l/upper/* | sort
ls -A /run/l/merged
"""


def test_unlinked_overlay_files_and_cwd_come_back(case):
    with open("/proc/filesystems") as f:
        if "\toverlay\n" not in f.read():
            pytest.skip("the kernel has no overlayfs (not in /proc/filesystems)")
    *_, after = case.roundtrip(SETUP, check=CHECK, iters=2)
    out = after.snap.check_output
    assert "/run/l/merged/gone (deleted)\n/run/l/merged/lowonly (deleted)\n/run/l/merged/uponly (deleted)" in out
    assert "lower-only\nupper-only" in out
    # whiteouts (0:0 character devices) hide the lower file and directory again; the upper file is gone
    assert "/run/l/upper/gone character special file 0:0" in out
    assert "/run/l/upper/lowonly character special file 0:0" in out
    assert "uponly" not in out.split("upper-only", 1)[1]
