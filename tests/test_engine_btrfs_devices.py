"""A btrfs filesystem over several devices: restore attaches a loop device for the mount's source
alone, and the filesystem does not mount without its fellows (fsconfig: ENOENT). Dump refuses it
naming the devices and what to declare (scenarios/fstypes/hunt32.yaml[btrfs_raid1])."""

import os

import pytest

from engine.fs import FsError, btrfs


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
