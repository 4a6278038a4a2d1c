"""Unix sockets whose name no longer leads to their file from the process: bound, then the
directory made a read-only bind (systemd-nspawn's notify socket), covered by an overmount, or
lazily unmounted; and a relative name. Restore binds each again with the dumped name and its file
where it was (engine/fds/unix.py bind_beside), on every kernel: before Linux 6.15 (strategy
sources=yard, no mounts on detached mounts) in a private mount namespace of a child of the
stand-in. Also inside a user namespace, whose stand-in makes that namespace as its own."""

from __future__ import annotations

import fcntl
import os
import socket
import stat

import pytest

from enginecase import case, py_hold  # noqa: F401  (fixture)
from engine.fds import sys as fsys

SIOCUNIXFILE = 0x89E0

SETUP = py_hold("""
import socket, subprocess
def sh(script):
    subprocess.run(["sh", "-ec", script], check=True)
def bound(path, n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(path); os.chmod(path, 0o640)
    os.chown(path, 0, GID)
    os.dup2(s.fileno(), n); s.close()
sh("mkdir -p /mnt/t /mnt/o /mnt/d; mount -t tmpfs t /mnt/t; mount -t tmpfs o /mnt/o; "
   "mount -t tmpfs d /mnt/d; mkdir /mnt/t/run")
bound("/mnt/t/run/notify", 10)
os.chdir("/mnt/t"); bound("run/rel", 13)
sh("mount --bind /mnt/t/run /mnt/t/run; mount -o remount,bind,ro /mnt/t/run")
bound("/mnt/o/sock", 11); sh("mount -t tmpfs cover /mnt/o")
bound("/mnt/d/sock", 12); sh("umount -l /mnt/d")
""")
USERNS = "exec unshare -U -r -m --propagation private python3"


def _file_of(pid: int, fd: int) -> tuple[str, os.stat_result, str | bytes, int]:
    """(path of its socket file on its mount, the file's stat, its name, the file's mount id), read
    through a copy of socket fd `fd` of `pid` (the kernel hands out the bound file: SIOCUNIXFILE)."""
    pidfd = os.pidfd_open(pid)
    try:
        s = socket.socket(fileno=fsys.pidfd_getfd(pidfd, fd))
    finally:
        os.close(pidfd)
    with s:
        f = fcntl.ioctl(s.fileno(), SIOCUNIXFILE)
        try:
            with open(f"/proc/self/fdinfo/{f}") as info:
                mnt = next(int(line.split()[1]) for line in info if line.startswith("mnt_id:"))
            return os.readlink(f"/proc/self/fd/{f}"), os.fstat(f), s.getsockname(), mnt
        finally:
            os.close(f)


def _mount_ids(pid: int) -> set[int]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return {int(line.split()[0]) for line in f}


@pytest.mark.parametrize("userns", [False, True], ids=["init", "userns"])
@pytest.mark.parametrize("strategy", ["", "sources=yard", "flags=remount,sources=yard,sharing=construct,ids=mountinfo"])
def test_names_bound_again_where_their_files_were(case, strategy, userns, monkeypatch):
    if strategy:
        monkeypatch.setenv("MNTCR_STRATEGY", strategy)
    gid = 0 if userns else 5   # (unshare -r maps root alone)
    setup = SETUP.replace("GID", str(gid)).replace("exec python3", USERNS, 1) if userns else SETUP.replace("GID", "5")
    _before, after = case.roundtrip(setup, check="ls -ln /mnt/t/run | awk 'NR > 1 {print $1, $3, $4, $NF}'")
    pid = after.pid
    assert after.snap.check_output.split("\n")[:2] == [f"srw-r----- 0 {gid} notify", f"srw-r----- 0 {gid} rel"], \
        after.snap.check_output
    visible = _mount_ids(pid)
    want = {10: ("/mnt/t/run/notify", "/mnt/t/run/notify"), 13: ("/mnt/t/run/rel", "run/rel"),
            11: ("/mnt/o/sock", "/mnt/o/sock"), 12: ("/sock", "/mnt/d/sock")}
    for fd, (path, name) in want.items():
        where, st, got, mnt = _file_of(pid, fd)
        assert (got, stat.S_ISSOCK(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == \
            (name, True, 0o640, 0, gid), (fd, got, oct(st.st_mode), st.st_uid, st.st_gid)
        if fd == 12:
            assert mnt not in visible, "the lazily unmounted mount's socket came back on a visible mount"
            continue
        assert where == path, (fd, where)
        if fd in (10, 13):
            # the very file the tree sees at that path (through the read-only bind)
            there = os.stat(f"/proc/{pid}/root{path}", follow_symlinks=False)
            assert (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino), fd
        else:
            # covered: the path leads to the cover's tmpfs, not to the socket file
            assert not os.path.exists(f"/proc/{pid}/root{path}")
