"""What the kernel keeps after a restored tree dies: nothing.

Restore parks the mounts of the superblocks it made in chains of detached mounts
(engine/parking.py) that stay connected while anything holds one of their mounts. A
kernel object that lives as long as a superblock of the chain and holds a file opened
through the chain (or a process that lives as long as one: a FUSE daemon) closes a cycle
nothing ever frees: superblocks, mounts, devices and processes stay until reboot.
Each test here restores such a tree, kills it, and waits for what it made to go.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

import enginecase
from enginecase import case  # noqa: F401  (fixture)


def _need(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def _holding(dev: int, ino: int) -> list[int]:
    """Pids with an fd on inode (dev, ino)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{name}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino):
                out.append(int(name))
                break
    return out


def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids of `pids` still alive (not zombies) after up to `timeout` s."""
    from zdtm.snapshot import alive
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def test_fuse_daemon_exits_when_restored_tree_dies(case):
    """The FUSE daemon restore restarts (--fuse-restart) exits when the restored tree dies: it held
    mount fds the restorer received from its helpers (inherited across exec) and its input file
    opened through a parked mount, so the chain beneath held the FUSE superblock's own parked
    mount, whose connection the daemon serves: daemon, superblock and chain stayed forever."""
    _need("squashfuse", "mksquashfs")
    from zdtm.snapshot import tree_pids
    pid = case.start("""
mknod -m 666 /dev/fuse c 10 229
mkdir -p /run/fs/src/d /mnt/fs; mount -t tmpfs work /run/fs; mkdir -p /run/fs/src/d
echo data > /run/fs/src/d/f
mksquashfs /run/fs/src /run/fs/img -quiet -no-progress >/dev/null
squashfuse -o fsname=/run/fs/img,subtype=squashfuse /run/fs/img /mnt/fs
exec 5</mnt/fs/d/f
hold
""", daemons=("squashfuse",))
    images = case.new_images_dir()
    case.dump(pid, images)
    restored = case.restore(images, ("--fuse-restart", "squashfuse=squashfuse -f {source} {conn}"))
    with open(f"/proc/{restored}/fd/5") as f:
        assert f.read() == "data\n"
    st = os.stat(f"/proc/{restored}/root/run/fs/img")
    daemons = [p for p in _holding(st.st_dev, st.st_ino) if p not in tree_pids(restored)]
    assert daemons, "no process outside the restored tree serves its FUSE mount"
    case.close()
    left = _gone(daemons)
    for p in left:
        os.kill(p, signal.SIGKILL)  # (it holds the cycle: the kernel frees the rest with it)
    assert not left, (f"the restarted FUSE daemon(s) {left} still run after the restored tree died: "
                      "something the kernel keeps holds their superblock")
