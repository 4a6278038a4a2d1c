"""A FUSE daemon restore restarts (--fuse-restart, engine/fs/fuse.py) runs in the restorer's mount
namespace: what it serves from must lie where that namespace reaches it. fuse-overlayfs with its
layers on a tmpfs of the tree (podman --storage-opt overlay.mount_program=... with the storage
inside the container) is refused before the stop with one line saying what to do (was: dump
succeeded, restore failed); the same layers on a mount declared external dump and come back."""

from __future__ import annotations

import os
import re
import shutil

import pytest

import enginecase
from enginecase import STOP_WATCH, CRError, case, was_stopped  # noqa: F401  (fixture)

# fuse-overlayfs on layers under STORE, mounted on /mnt/m; the holder keeps a file of it open
_SETUP = """mknod -m 666 /dev/fuse c 10 229
mkdir -p {store} /mnt/m
{mount_store}
mkdir -p {store}/l {store}/u {store}/w; echo lower > {store}/l/f
fuse-overlayfs -o lowerdir={store}/l,upperdir={store}/u,workdir={store}/w /mnt/m </dev/null >/dev/null 2>&1
exec 5</mnt/m/f
hold
"""


def _need():
    if shutil.which("fuse-overlayfs") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("fuse-overlayfs or /dev/fuse missing")


def test_fuse_overlayfs_on_layers_of_the_tree_is_refused_before_the_stop(case):
    _need()
    setup = STOP_WATCH + _SETUP.format(store="/run/st", mount_store="mount -t tmpfs st /run/st")
    pid = case.start(setup, daemons=("fuse-overlayfs",))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert re.search(r"process \d+ \(fuse-overlayfs\) serves a FUSE filesystem from /run/st/\w, on mount \d+ "
                     r"\(tmpfs at /run/st\) whose files only the image holds: .* keep what it serves from on a "
                     r"mount declared external", msg), msg
    assert len(msg.strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_fuse_overlayfs_on_external_layers_comes_back(case, tmp_path):
    _need()
    store = tmp_path / "st"
    store.mkdir()
    pid = case.start(_SETUP.format(store="/run/st", mount_store=""), binds=((str(store), "/run/st"),),
                     daemons=("fuse-overlayfs",))
    images = case.new_images_dir()
    case.dump(pid, images, ("--external", "mnt[/run/st]:st"))
    restart = f"fuse-overlayfs=fuse-overlayfs -f -o lowerdir={store}/l,upperdir={store}/u,workdir={store}/w {{conn}}"
    restored = case.restore(images, ("--external", f"mnt[st]:{store}", "--fuse-restart", restart))
    with open(f"/proc/{restored}/fd/5") as f:
        assert f.read() == "lower\n"
