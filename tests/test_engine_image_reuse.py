"""An image used as users use them: dumped with --leave-running (the tree goes on, unchanged),
moved to another directory before the restore, and restored twice from the one image (two trees
at once, each equal to the dumped one). Nothing in an image may depend on where it was written or
on being restored once: the archives are read, never consumed.
"""

from __future__ import annotations

import os
import shutil

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
