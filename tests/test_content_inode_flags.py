"""Inode attributes tar keeps none of (chattr i, a, d): the archiving child lists them
(engine/content.py inode_flags), an archive reference keeps them (imageformat ARCHIVE_REF "attrs"),
and restore sets them once every file is there (content.set_inode_flags, from restore's seal).
scenarios/fstypes/hunt33.yaml[tmpfs_chattr] does the whole C/R."""

from __future__ import annotations

import fcntl
import os
import struct

import pytest

from engine import content, forkrun, imageformat, kernel


def _flags(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return struct.unpack_from("<i", fcntl.ioctl(fd, content.FS_IOC_GETFLAGS, bytes(8)))[0]
    finally:
        os.close(fd)


def _listed_and_set(tmp: str) -> tuple:
    """In a private mount namespace: a tmpfs with flagged files (one beneath a mount of another
    filesystem, which the walk leaves alone), listed; then the list set on a fresh tmpfs."""
    os.makedirs(f"{tmp}/a", exist_ok=True)
    kernel.mount("fa", f"{tmp}/a", "tmpfs", 0, "size=1m")
    os.makedirs(f"{tmp}/a/d/e")
    os.makedirs(f"{tmp}/a/m")
    for name in ("imm", "app", "nod", "plain", "d/e/deep"):
        with open(f"{tmp}/a/{name}", "w") as f:
            f.write(name)
    kernel.mount("fm", f"{tmp}/a/m", "tmpfs", 0, "size=1m")
    with open(f"{tmp}/a/m/other", "w") as f:
        f.write("x")
    for name, flag in (("imm", 0x10), ("app", 0x20), ("nod", 0x40), ("d/e/deep", 0x10 | 0x20), ("d", 0x40),
                       ("m/other", 0x10)):
        fd = os.open(f"{tmp}/a/{name}", os.O_RDONLY)
        fcntl.ioctl(fd, content.FS_IOC_SETFLAGS, struct.pack("<iI", flag, 0))
        os.close(fd)
    staging = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    listed = content.inode_flags(staging, ["a"])
    os.makedirs(f"{tmp}/b", exist_ok=True)
    kernel.mount("fb", f"{tmp}/b", "tmpfs", 0, "size=1m")
    os.makedirs(f"{tmp}/b/d/e")
    for name in ("imm", "app", "nod", "d/e/deep"):
        open(f"{tmp}/b/{name}", "w").close()
    os.symlink("imm", f"{tmp}/b/plain")   # (a name that is no file now: passed over)
    root = os.open(f"{tmp}/b", os.O_RDONLY | os.O_DIRECTORY)
    content.set_inode_flags(root, [rec for _, rec in listed] + [{"path": "/plain", "flags": 0x10}])
    got = {name: _flags(f"{tmp}/b/{name}") & content.INODE_FLAGS for name in ("imm", "app", "nod", "d", "d/e/deep")}
    for name in ("imm", "d/e/deep", "m/other"):   # (let the test's tmp_path be removed)
        base = "a" if name == "m/other" else "b"
        fd = os.open(f"{tmp}/{base}/{name}", os.O_RDONLY)
        fcntl.ioctl(fd, content.FS_IOC_SETFLAGS, struct.pack("<iI", 0, 0))
        os.close(fd)
    return sorted((m, r["path"], r["flags"]) for m, r in listed), got


def test_listed_and_set_again(tmp_path):
    try:
        listed, got = forkrun.in_mount_ns(_listed_and_set, str(tmp_path))
    except OSError as e:
        pytest.skip(f"tmpfs without FS_IOC_SETFLAGS (Linux 6.0): {e}")
    assert listed == [("a", "/app", 0x20), ("a", "/d", 0x40), ("a", "/d/e/deep", 0x30), ("a", "/imm", 0x10),
                      ("a", "/nod", 0x40)], listed
    assert got == {"imm": 0x10, "app": 0x20, "nod": 0x40, "d": 0x40, "d/e/deep": 0x30}, got


def test_archive_reference_attrs_validated():
    ok = {"file": "files-0.tar", "member": "sb-1", "root": "/", "attrs": [{"path": "/x", "flags": 0x30}]}
    imageformat.check_record(imageformat.ARCHIVE_REF, ok, "arc")
    for bad in ({"path": "/x", "flags": 0}, {"path": "/x", "flags": 0x1000}, {"path": "x/../y", "flags": 0x10}):
        with pytest.raises(Exception) as e:
            imageformat.check_record(imageformat.ARCHIVE_REF, {**ok, "attrs": [bad]}, "arc")
        assert "attrs" in str(e.value), e.value


def test_walk_passes_over_a_file_removed_meanwhile(tmp_path, monkeypatch):
    """A file removed between the walk's scandir and its statx (a superblock a process outside the
    tree shares: a pod's /dev/shm) is passed over, as tar passes over it, not a failed dump."""
    from engine import content, kernel
    member = tmp_path / "sb-0"
    member.mkdir()
    for name in ("a", "b"):
        (member / name).write_text("")
    real = kernel.statx_attributes

    def racing(path, *a, **kw):
        if path.endswith("/b"):
            (member / "b").unlink()   # (removed by a process outside the tree, now)
        return real(path, *a, **kw)

    monkeypatch.setattr(kernel, "statx_attributes", racing)
    staging = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        assert content.inode_flags(staging, ["sb-0"]) == []
    finally:
        os.close(staging)



def _set_under_yard(tmp: str) -> int:
    """In a private mount namespace: a tmpfs with a file, then "/" covered by a scratch tmpfs as
    restore's yard (sources=yard, engine/restore.py _make_yard) covers it, then its attribute set
    through the fd of /proc opened before, as restore's seal sets it."""
    os.makedirs(f"{tmp}/b", exist_ok=True)
    kernel.mount("fb", f"{tmp}/b", "tmpfs", 0, "size=1m")
    open(f"{tmp}/b/imm", "w").close()
    root = os.open(f"{tmp}/b", os.O_RDONLY | os.O_DIRECTORY)
    proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    own = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    fd = kernel.fsopen("tmpfs")
    kernel.fsconfig(fd, kernel.FSCONFIG_CMD_CREATE)
    yard = kernel.fsmount(fd)
    kernel.move_mount(yard, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)
    kernel.setns(own, kernel.CLONE_NEWNS)   # (as restore enters its service namespace again: the yard is "/")
    assert not os.path.exists("/proc/self")   # ("/proc" is the yard's now)
    content.set_inode_flags(root, [{"path": "/imm", "flags": 0x10}], proc)
    imm = kernel.openat2(root, "imm", os.O_RDONLY, 0)
    try:
        got = struct.unpack_from("<i", fcntl.ioctl(imm, content.FS_IOC_GETFLAGS, bytes(8)))[0]
        fcntl.ioctl(imm, content.FS_IOC_SETFLAGS, struct.pack("<iI", 0, 0))   # (let tmp_path go)
    finally:
        os.close(imm)
    return got & content.INODE_FLAGS


def test_set_under_the_yard(tmp_path):
    """Restore's seal sets the attributes with the yard over "/" (sources=yard, Linux < 6.15): the
    file is reopened through restore's own /proc fd, not "/proc" (the yard's empty root there), which
    left every attribute unset on the older kernels' path (session 35, hunt33[tmpfs_chattr] under
    MNTCR_STRATEGY=sources=yard)."""
    try:
        got = forkrun.in_mount_ns(_set_under_yard, str(tmp_path))
    except OSError as e:
        pytest.skip(f"tmpfs without FS_IOC_SETFLAGS (Linux 6.0): {e}")
    assert got == 0x10, got
