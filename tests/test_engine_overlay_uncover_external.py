"""An overlay a user namespace mounted without userxattr whose upper layer lies on the host's files
(an external mount: a user's overlay in a directory of its home), a lower directory removed through it
while it is the cwd. Restore uncovers such a directory by taking the whiteout out of the upper layer
(engine/fs/overlay.py), which it does only in a layer the image makes (engine/imageformat.py
_check_uncover): never on the host's files. Dump recorded it anyway (session 35's first version),
stopped the tree and then failed on its own image ("a bug, please report it"). Dump refuses it now,
before the stop, saying what to do (engine/mountrules.py uncover_layer); the review's reproducer."""

from __future__ import annotations

import os
import re

from enginecase import DUMP_EXTERNALS, STOP_WATCH, case, mntcr, take, userns_setup, was_stopped  # noqa: F401
from test_engine_overlay_lower_removed import _skip_without_overlay

BODY = """
for d in ("lower/data/lgone", "upper", "work", "merged"):
    os.makedirs("/mnt/ext/" + d, exist_ok=True)
opts = b"lowerdir=/mnt/ext/lower,upperdir=/mnt/ext/upper,workdir=/mnt/ext/work"
assert libc.mount(b"ovl", b"/mnt/ext/merged", b"overlay", 0, opts) == 0, os.strerror(ctypes.get_errno())
os.chdir("/mnt/ext/merged/data/lgone")
os.rmdir("/mnt/ext/merged/data/lgone")
open("/tmp/removed", "w").close()
"""


def test_uncover_in_an_external_upper_layer_refused_before_the_stop(case, tmp_path):  # noqa: F811
    """Refused in one line naming the directory, why and what to do; the tree never stopped, the image
    directory not made, the host's upper layer keeps its whiteout."""
    _skip_without_overlay()
    host = str(tmp_path / "ext")
    os.makedirs(host)
    os.chown(host, 20000, 400000)
    pid = case.start(STOP_WATCH + userns_setup(0x00020000, BODY, ready="/tmp/removed"), binds=((host, "/mnt/ext"),))
    take(pid)
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *DUMP_EXTERNALS, "--external", "mnt[/mnt/ext]:ext")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert re.fullmatch(r"mntcr dump: process \d+ cwd \(/mnt/ext/merged/data/lgone \(deleted\)\): removed while "
                        r"in use on an overlay a user namespace mounted without userxattr, a directory of a lower "
                        r"layer, whose upper layer lies on a filesystem the dump does not make \(the host's: "
                        r"restore writes nothing there\): restore cannot make it again \(no opaque xattr\); mount "
                        r"the overlay with userxattr, or leave the directory before dumping\n", r.stderr), r.stderr
    assert not os.path.exists(images)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    st = os.lstat(os.path.join(host, "upper/data/lgone"))
    assert (st.st_mode >> 12, st.st_rdev) == (0o2, 0), "the host's upper layer lost its whiteout"
