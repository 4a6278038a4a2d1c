"""An overlay whose layers lie on a mount lazily unmounted after the overlay was made (a process
keeps the mount alive, detached, through a file on it), while the overlay stays visible (found by
tests/test_hardening_random_trees.py). The layer paths lead nowhere in the namespace any more; with
unique mount ids, resolving them as they were when the overlay was made skips the mounts made
after it, so a later overmount of the directory beneath (`cover`) used to hide that: dump recorded
the layers on the mount beneath, which holds no such directory, and restore failed on it
(openat2('t0/ov2'): No such file or directory). Dump refuses it before the stop instead, whether or
not it is covered: which directory of the detached mount holds a layer, dump cannot reach when the
holder keeps only a regular file of it. scenarios/regressions/overlay_on_detached_layers.yaml runs
the variants (without the bind the overlay only lives in the detached tree and is not dumped)."""

from __future__ import annotations

import pytest

from enginecase import STOP_WATCH, CRError, case, was_stopped  # noqa: F401  (fixture)


def _setup(upper: bool, cover: bool) -> str:
    opts = "lowerdir=/mnt/t0/ov2/l,upperdir=/mnt/t0/ov2/u,workdir=/mnt/t0/ov2/w" if upper \
        else "lowerdir=/mnt/t0/ov2/l:/mnt/t0/ov2/u"
    return f"""
mount -t tmpfs base /mnt
mkdir -p /mnt/t0 && mount -t tmpfs t0 /mnt/t0
mkdir -p /mnt/t0/ov2/l /mnt/t0/ov2/u /mnt/t0/ov2/w /mnt/t0/ov2/m && echo 2 > /mnt/t0/ov2/l/x
mount -t overlay ov2 -o {opts} /mnt/t0/ov2/m
mkdir -p /mnt/b3 && mount --bind /mnt/t0/ov2/m /mnt/b3
echo 4 > /mnt/t0/l4 && exec 3</mnt/t0/l4 && umount -l /mnt/t0
{"mount -t tmpfs o5 /mnt" if cover else ""}
hold
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("upper", [True, False], ids=["upper", "lower-only"])
@pytest.mark.parametrize("cover", [True, False], ids=["covered", "uncovered"])
def test_overlay_on_layers_of_a_detached_mount_refused_unstopped(case, upper, cover):
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            pytest.skip("overlay is not in /proc/filesystems (kernel without CONFIG_OVERLAY_FS)")
    pid = case.start(STOP_WATCH + _setup(upper, cover))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    msg = str(err.value)
    assert "on overlay: its layer lowerdir=/mnt/t0/ov2/l is no longer a directory at that path" in msg, msg
    assert "lazily unmounted, it may live on detached" in msg, msg
    assert len(msg.strip().splitlines()) == 2, msg   # ("mntcr dump exited N:" and the line)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    assert _state(pid) in "SR", "the tree was not left running"
