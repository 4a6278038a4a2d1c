"""A pty of the tree's own devpts instance bound onto /dev/console (CRIU's pty-console): root /N of
the instance, which a new instance lacks. Restore opens the instance's ptmx, where the tree's master
was opened, until pty N exists, and gives that master to the process that held it; a pty whose
master no process of the tree holds is refused before the tree is stopped."""

from __future__ import annotations

import os
import subprocess

import pytest

from enginecase import STOP_WATCH, CRError, case, grab_fd, py_hold, was_stopped  # noqa: F401  (fixture)

DEVPTS = "mkdir -p /dev/pts; mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts; touch /dev/console\n"

# Pty 1 bound as the console, its master at fd 10; pty 0 closed after the bind (gone): restore opens
# both to reach 1 and lets 0 go again.
SETUP = DEVPTS + py_hold("""
import fcntl, struct, subprocess
m0 = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
m1 = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY); fcntl.ioctl(m1, 0x40045431, struct.pack("i", 0))
subprocess.run(["mount", "--bind", "/dev/pts/1", "/dev/console"], check=True)
os.close(m0)
os.dup2(m1, 10); os.close(m1)
""")


@pytest.mark.parametrize("ptmx", ["/dev/pts/ptmx", "/dev/ptmx"])
def test_pty_bound_as_console_restored_with_its_master(case, ptmx):
    """Its master opened through the devpts instance's own ptmx, or through a ptmx node beside it
    (/dev/ptmx on the /dev tmpfs, which finds the instance mounted at /dev/pts)."""
    check = "ls /dev/pts; findmnt -n -o TARGET,FSTYPE,FSROOT /dev/console"
    setup = SETUP.replace("/dev/pts/ptmx", ptmx).replace(DEVPTS, DEVPTS + "mknod -m 666 /dev/ptmx c 5 2\n")
    before, after = case.roundtrip(setup, check=check)
    assert before.snap.check_output.split() == ["1", "ptmx", "/dev/console", "devpts", "/1"], before.snap.check_output
    # The console is the pty of the master the process holds: what the master writes, it reads.
    master = grab_fd(after.pid, 10)
    console = os.open(f"/proc/{after.pid}/root/dev/console", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        os.write(master, b"ping\n")
        assert os.read(console, 16) == b"ping\n"
    finally:
        os.close(console)
        os.close(master)


def test_pty_bound_as_console_whose_master_is_outside_refused_unstopped(case):
    """The master lives outside the tree (here: the test holds it, as LXC's monitor holds the console's):
    restore would make the pty with nobody holding its master. Dump refuses before the stop, naming
    the mount and --external."""
    pid = case.start(STOP_WATCH + DEVPTS + "hold\n")
    master = os.open(f"/proc/{pid}/root/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
    try:
        subprocess.run(["nsenter", "-t", str(pid), "-m", "mount", "--bind", "/dev/pts/0", "/dev/console"],
                       check=True)
        with pytest.raises(CRError) as err:
            case.dump(pid, case.new_images_dir(), ("--leave-running",))
        assert "(/dev/console) on devpts: its root /0 is made again only with what holds it" in str(err.value)
        assert "--external mnt[/dev/console]:KEY" in str(err.value)
        assert not was_stopped(pid), "dump stopped the tree before it refused"
    finally:
        os.close(master)


def test_a_pty_root_is_made_after_the_other_mounts_of_its_devpts():
    """Restore's order (by creation, or by the tree where ids are reused) may put /dev/console before
    /dev/pts; the pty is made through the ptmx of /dev/pts, so it moves after it, but never before
    its parent, and not when something is mounted on it."""
    from engine import fs
    m = lambda i, parent, root, sb, fstype="devpts": {"id": i, "parent": parent, "root": root, "sb": sb,  # noqa: E731
                                                       "fstype": fstype, "mountpoint": f"/m{i}"}
    dev, console, pts, other = m(1, None, "/", "sb-0", "tmpfs"), m(2, 1, "/0", "sb-1"), m(3, 1, "/", "sb-1"), \
        m(4, 1, "/", "sb-2", "tmpfs")
    assert [x["id"] for x in fs.held_roots_last([dev, console, pts, other])] == [1, 3, 2, 4]
    assert [x["id"] for x in fs.held_roots_last([dev, pts, console, other])] == [1, 3, 2, 4]
    cover = m(5, 2, "/", "sb-2", "tmpfs")   # (mounted on the console: it stays where it is)
    assert [x["id"] for x in fs.held_roots_last([dev, console, pts, cover])] == [1, 2, 3, 5]
