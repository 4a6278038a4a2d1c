"""An image used as users use them: dumped with --leave-running (the tree goes on, unchanged),
moved to another directory before the restore, and restored twice from the one image (two trees
at once, each equal to the dumped one). Nothing in an image may depend on where it was written or
on being restored once: the archives are read, never consumed.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from enginecase import assert_same, case, take  # noqa: F401  (fixture)

# Mounts and fds whose restore reads the image's archives: a tmpfs with files, a shared bind of a
# directory of it, a deleted file held open (a ghost), a pipe and a socket pair with data queued,
# a fifo with a reader and a writer.
SETUP = """
mkdir -p /mnt/t /mnt/b; mount -t tmpfs zdtm-t /mnt/t; mkdir /mnt/t/d; echo content > /mnt/t/d/f
mount --make-shared /mnt/t; mount --bind /mnt/t/d /mnt/b
echo ghost > /mnt/t/g; exec 5</mnt/t/g; rm /mnt/t/g
mkfifo /mnt/t/fifo; exec 6<>/mnt/t/fifo; exec 7>/mnt/t/fifo; echo in-fifo >&7
""" + """exec python3 -c '
import os, socket, signal, ctypes
r, w = os.pipe(); os.write(w, b"in-pipe"); os.dup2(r, 8); os.dup2(w, 9)
a, b = socket.socketpair(); a.send(b"in-socket"); os.dup2(a.fileno(), 10); os.dup2(b.fileno(), 11)
os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
while True:
    signal.pause()
'
"""


def test_left_running_moved_and_restored_twice(case, tmp_path):
    """dump --leave-running: the tree runs on equal to itself; the image moved to another directory
    (and the one it was written in gone) restores, twice at once, each tree equal to the dumped one."""
    pid = case.start(SETUP)
    before = take(pid)
    images = case.new_images_dir()
    case.dump(pid, images, ("--leave-running",))
    assert os.path.exists(f"/proc/{pid}"), "--leave-running: the tree is gone"
    assert_same(before, take(pid))

    moved = str(tmp_path / "elsewhere" / "img")
    os.makedirs(os.path.dirname(moved))
    shutil.move(images, moved)
    first = case.restore(moved)
    os.unlink(moved + ".pid")   # (the helper's pid file for the restore: one per restore)
    second = case.restore(moved)
    assert len({pid, first, second}) == 3
    assert_same(before, take(first))
    assert_same(before, take(second))
    # The original still runs beside its two copies, itself still.
    assert_same(before, take(pid))


def test_root_from_outside_restored_into_another_root(case, tmp_path):
    """A container whose root is a directory of the host's filesystem its runtime prepared (restored
    with --root, as criu's): the image restores into fresh copies of that directory, each tree
    rooted where its --root says (a file only the copy has is there) and otherwise equal to the
    dumped one."""
    from zdtm.snapshot import tree_pids
    t = str(tmp_path)
    subprocess.run(["sh", "-ec", f"mkdir -p {t}/a/usr {t}/a/.hold {t}/a/data && echo image > {t}/a/os-release && "
                    f"for b in bin lib lib64 sbin; do ln -s usr/$b {t}/a/$b; done && "
                    f"ln -s {os.path.realpath(shutil.which('sleep'))} {t}/a/.hold/mntcr-hold"], check=True)
    pid = case.start("""
unshare -m sh -c 'exec 2>/ct/err; mount --rbind /usr /ct/usr; mount -t tmpfs own /ct/data; mkdir -p /ct/old; cd /ct
                  pivot_root . old; cd /; busybox umount -l /old
                  exec 0</os-release 3</data 1>/data/out 2>&1; exec /.hold/mntcr-hold 100000' &
hold
""", binds=((f"{t}/a", "/ct"),))
    child = next((k for k in tree_pids(pid) if k != pid), None)
    assert child, open(f"{t}/a/err").read()
    before = take(child)
    images = case.new_images_dir()
    from enginecase import mntcr
    r = mntcr("dump", "-t", str(child), "-D", images, "--external", "mnt[/usr]:usr")
    assert r.returncode == 0, r.stderr
    # The runtime makes the root directory again (a copy, at the same path: the image records it
    # for the mount's root), twice, each while the tree restored into the one before still runs.
    subprocess.run(["mv", f"{t}/a", f"{t}/orig"], check=True)
    for copy in ("b", "c"):
        subprocess.run(["sh", "-ec", f"[ ! -e {t}/a ] || mv {t}/a {t}/used-{copy}; cp -a {t}/orig {t}/a; "
                        f"touch {t}/a/only-{copy}"], check=True)
        restored = case.restore(images, ("--root", f"{t}/a"))
        os.unlink(images + ".pid")
        assert os.path.exists(f"/proc/{restored}/root/only-{copy}"), f"not rooted in the copy {copy}"
        assert_same(before, take(restored))


def test_root_not_used_is_said(case):
    """--root given for an image whose root mount the tree made itself (a tmpfs: its files are in
    the image): restore makes the root from the image and says that --root was not used."""
    from enginecase import RESTORE_EXTERNALS, mntcr
    pid = case.start("hold\n")
    images = case.new_images_dir()
    case.dump(pid, images)
    r = mntcr("restore", "-D", images, *RESTORE_EXTERNALS, "--root", "/", "--pidfile", images + ".pid")
    assert r.returncode == 0, r.stderr
    case.trees.append(int(open(images + ".pid").read()))
    assert "--root / is not used: the image makes its root mount itself" in r.stderr, r.stderr
