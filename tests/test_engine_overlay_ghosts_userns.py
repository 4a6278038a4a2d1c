"""A directory removed while it is a cwd, on an overlay a user namespace mounted (a rootless
container's root: crun or podman in their pause process's namespaces). Such an overlay has no
redirect_dir and no trusted xattrs, so it refuses to move a directory into another, merged one
(EXDEV): restore extracted the directory into a private directory beside its name and renamed it
into place, and failed with "recreating its deleted file ...: Invalid cross-device link"."""

from __future__ import annotations

import os

import pytest

from enginecase import assert_same, case, py_hold, take  # noqa: F401  (fixture)

# The tree's process: a new user and mount namespace (uid 0 there is 20000 outside), an overlay of
# a tmpfs of its own whose lower layer has /data; a pure upper directory made in the merged /data
# and removed while the process's cwd; a file of the upper layer held and removed too.
BODY = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x00020000) == 0   # CLONE_NEWUSER | CLONE_NEWNS
open("/tmp/unshared", "w").close()
while not os.path.exists("/tmp/mapped"):
    time.sleep(0.05)
os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
assert libc.mount(b"own", b"/mnt", b"tmpfs", 0, None) == 0
for d in ("lower/data", "upper", "work", "merged"):
    os.makedirs("/mnt/" + d)
opts = b"lowerdir=/mnt/lower,upperdir=/mnt/upper,workdir=/mnt/work"
assert libc.mount(b"ovl", b"/mnt/merged", b"overlay", 0, opts) == 0, os.strerror(ctypes.get_errno())
os.mkdir("/mnt/merged/data/gone", 0o751)
f = open("/mnt/merged/data/tmp", "w+"); f.write("upper then removed"); f.flush(); os.unlink("/mnt/merged/data/tmp")
os.chdir("/mnt/merged/data/gone")
os.rmdir("/mnt/merged/data/gone")
"""

SETUP = "(" + py_hold(BODY).strip() + ") </dev/null >/dev/null 2>&1 &\n" + """
wait_for /tmp/unshared
echo "0 20000 20000" > /proc/$!/uid_map; echo "0 400000 50000" > /proc/$!/gid_map; touch /tmp/mapped
hold
"""


def test_removed_cwd_on_an_overlay_of_a_user_namespace(case):
    with open("/proc/filesystems") as f:
        if "\toverlay\n" not in f.read():
            pytest.skip("the kernel has no overlayfs (not in /proc/filesystems)")
    pid = case.start(SETUP)
    before = take(pid)
    held = [p for p in before.snap.procs if "(deleted)" in str(p.fds)]
    assert held, "no process of the tree holds the removed file"
    after = take(case.cr(pid))
    assert_same(before, after)      # the cwd a removed directory of the overlay, the file's content
    for p in after.snap.procs:
        if "(deleted)" in str(p.fds):
            assert os.readlink(f"/proc/{p.pid}/cwd") == "/mnt/merged/data/gone (deleted)"
            st = os.stat(f"/proc/{p.pid}/cwd")
            assert (oct(st.st_mode & 0o7777), st.st_uid) == ("0o751", 20000)
            # nothing of it left in the upper layer (it was a pure upper directory)
            assert sorted(os.listdir(f"/proc/{p.pid}/root/mnt/upper/data")) == []
            break
    else:
        raise AssertionError("no process of the restored tree holds the removed file")
