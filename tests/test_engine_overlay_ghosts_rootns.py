"""A lower layer's directory removed while held, on an overlay the initial user namespace's root
mounted, seen by a process of a user namespace of its own (engine/fs/overlay.py deleted_dir: the
superblock's owner decides, not the process's mount namespace)."""

from __future__ import annotations

import os

import pytest

from enginecase import HOLD_COMM, assert_same, case, py_hold, take  # noqa: F401  (fixture)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for t in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{t}/children") as f:
                todo += [int(x) for x in f.read().split()]
    return out


BODY = """
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x00020000) == 0
assert libc.mount(b"own", b"/mnt", b"tmpfs", 0, None) == 0
for d in ("lower/data/lgone", "upper", "work", "merged"):
    os.makedirs("/mnt/" + d)
os.chmod("/mnt/lower/data/lgone", 0o751)
opts = b"lowerdir=/mnt/lower,upperdir=/mnt/upper,workdir=/mnt/work"
assert libc.mount(b"ovl", b"/mnt/merged", b"overlay", 0, opts) == 0, os.strerror(ctypes.get_errno())
r, w = os.pipe()
r2, w2 = os.pipe()
child = os.fork()
if child == 0:
    assert libc.unshare(0x10000000 | 0x00020000) == 0
    os.write(w, b"u")
    os.read(r2, 1)
    os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
    os.chdir("/mnt/merged/data/lgone")
    os.write(w, b"c")
    for x in (r, w, r2, w2):
        os.close(x)
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    libc.prctl(15, b"HOLDCOMM", 0, 0, 0)
    while True:
        signal.pause()
os.read(r, 1)
for f in ("uid_map", "gid_map"):
    with open(f"/proc/{child}/{f}", "w") as m:
        m.write("0 0 65536")
os.write(w2, b"m")
os.read(r, 1)
for x in (r, w, r2, w2):
    os.close(x)
os.rmdir("/mnt/merged/data/lgone")
open("/tmp/removed", "w").close()
"""



def test_removed_lower_dir_of_a_root_made_overlay_in_a_userns_container(case):
    """A lower layer's directory removed while a process of a user namespace holds it as its cwd, on
    an overlay the initial namespace's root mounted (docker --userns-remap, podman --userns, lxc
    started by root): dumped and restored (restore makes such an overlay as root, which sets the
    opaque xattr). The refusal for an overlay a user namespace mounted once looked at the process's
    mount namespace instead of the superblock's owner, and refused this tree."""
    with open("/proc/filesystems") as f:
        if "\toverlay\n" not in f.read():
            pytest.skip("the kernel has no overlayfs (not in /proc/filesystems)")
    setup = "(" + py_hold(BODY.replace("HOLDCOMM", HOLD_COMM)).strip() + \
        ") </dev/null >/dev/null 2>&1 &\nwait_for /tmp/removed\nhold\n"
    pid = case.start(setup)
    before = take(pid)
    restored = case.cr(pid)
    assert_same(before, take(restored))
    assert any(os.readlink(f"/proc/{t}/cwd").endswith("/data/lgone (deleted)")
               for t in _descendants(restored)), "the held directory did not come back"
