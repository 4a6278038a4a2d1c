"""A btrfs filesystem over several devices: restore attaches a loop device for the mount's source
alone, and the filesystem does not mount without its fellows (fsconfig: ENOENT). Dump refuses it
naming the devices and what to declare (scenarios/fstypes/hunt32.yaml[btrfs_raid1])."""

import os
import re
import shutil

import pytest

from engine.fs import FsError, btrfs
from enginecase import STOP_WATCH, case, mntcr, was_stopped  # noqa: F401  (fixture)
from zdtm.holder import HELPERS


def _sysfs(tmp_path, fsids):
    for fsid, devs in fsids.items():
        for name, dev in devs.items():
            os.makedirs(tmp_path / fsid / "devices" / name)
            (tmp_path / fsid / "devices" / name / "dev").write_text(dev + "\n")
    return str(tmp_path)


def test_fellow_devices_lists_every_device_of_the_filesystem(tmp_path):
    base = _sysfs(tmp_path, {"aaaa": {"loop0": "7:0", "loop3": "7:3"}, "bbbb": {"loop1": "7:1"}})
    assert btrfs.fellow_devices("7:3", base) == ["7:0", "7:3"]
    assert btrfs.fellow_devices("7:1", base) == ["7:1"]
    assert btrfs.fellow_devices("7:9", base) == []
    assert btrfs.fellow_devices("7:0", str(tmp_path / "none")) == []


class _Plan:
    mntns_doc = {"mnt-0": {"mounts": [{"sb": "sb-2", "mountpoint": "/mnt/b"},
                                      {"sb": "sb-2", "mountpoint": "/mnt/a"},
                                      {"sb": "sb-1", "mountpoint": "/"}]}}


def test_multi_device_filesystem_refused_naming_devices_and_mount(monkeypatch):
    monkeypatch.setattr(btrfs, "fellow_devices", lambda dev, base=None: ["7:0", "7:1"])
    sb = {"fstype": "btrfs", "source": "/dev/loop0", "device": {"dev": "7:0"}}
    with pytest.raises(FsError) as e:
        btrfs.TYPE.plan_device("sb-2", sb, _Plan())
    msg = str(e.value.strerror)
    assert "spans 2 devices (7:0 7:1)" in msg and "--external mnt[/mnt/a]:KEY" in msg, msg
    assert "--external dev[7:0]:KEY" in msg and "\n" not in msg, msg


def test_single_device_filesystem_goes_on_to_the_loop_device(monkeypatch):
    monkeypatch.setattr(btrfs, "fellow_devices", lambda dev, base=None: ["7:0"])
    seen = []
    monkeypatch.setattr(btrfs.BlockType, "plan_device", lambda self, sid, sb, plan: seen.append(sid) or True)
    sb = {"fstype": "btrfs", "source": "/dev/loop0", "device": {"dev": "7:0"}}
    assert btrfs.TYPE.plan_device("sb-2", sb, _Plan()) is True and seen == ["sb-2"]


def test_multi_device_filesystem_refused_before_the_stop(case):
    """btrfs raid1 over two loop devices (their nodes gone, as `losetup -d` leaves an autoclear
    device): its mount shows an anonymous device, so the devices are known only through an fd on it.
    Dump refuses naming both and what to declare before it stops the tree (it refused only once the
    tree was stopped before session 33)."""
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("no mkfs.btrfs (Debian package btrfs-progs)")
    pid = case.start(STOP_WATCH + HELPERS + "zdtm_loop_nodes\n" + """
truncate -s 128M /tmp/b1.img /tmp/b2.img
mkfs.btrfs -q -f -d raid1 -m raid1 /tmp/b1.img /tmp/b2.img >/dev/null
d1=$(losetup -f --show /tmp/b1.img); d2=$(losetup -f --show /tmp/b2.img)
mkdir /mnt/r; mount -o device=$d2 $d1 /mnt/r; losetup -d $d1 $d2
echo raid > /mnt/r/f; exec 5</mnt/r/f
hold
""")
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, "--external", "mnt[/usr]:usr", "--external", "mnt[/etc]:etc")
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(r"mntcr dump: superblock sb-\d+ \(btrfs on /dev/loop\d+\): the filesystem spans 2 devices "
                        r"\(7:\d+ 7:\d+\), and restore makes the device of its source alone; declare the mount with "
                        r"--external mnt\[/mnt/r\]:KEY, or its device with --external dev\[7:\d+\]:KEY .*\n",
                        r.stderr), r.stderr
    assert not os.path.exists(images)
    assert not was_stopped(pid), "dump stopped the tree before it refused"
