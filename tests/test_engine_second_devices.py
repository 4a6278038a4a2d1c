"""Block filesystems that need a second device restore does not make (session 32 hunt,
scenarios/fstypes/hunt32.yaml): ext4 whose journal lies on a device of its own (restore failed
with EUCLEAN) and xfs mounted with logdev= (dump called its own image a bug). Both are refused
before the stop, naming the mount and what to declare."""

import os
import struct

import pytest

from engine.fs import FsError, ext4, xfs


class _Plan:
    mntns_doc = {"mnt-0": {"mounts": [{"sb": "sb-3", "mountpoint": "/mnt/a"}, {"sb": "sb-1", "mountpoint": "/"}]}}


def _ext_image(tmp_path, compat: int, inum: int, jdev: int) -> str:
    sb = bytearray(1024)
    struct.pack_into("<H", sb, 0x38, 0xEF53)
    struct.pack_into("<I", sb, 0x5C, compat)
    struct.pack_into("<II", sb, 0xE0, inum, jdev)
    path = tmp_path / "img"
    path.write_bytes(bytes(1024) + bytes(sb))
    return str(path)


@pytest.mark.parametrize("compat, inum, jdev, want", [
    (0x4, 0, os.makedev(7, 1), os.makedev(7, 1)),   # a journal on device 7:1
    (0x4, 0, 0, 0),                                 # on a device it does not name (by uuid)
    (0x4, 8, 0, None),                              # in inode 8: internal
    (0x0, 0, 0, None),                              # no journal (ext2)
])
def test_journal_device_read_from_the_superblock(tmp_path, monkeypatch, compat, inum, jdev, want):
    path = _ext_image(tmp_path, compat, inum, jdev)
    monkeypatch.setattr(ext4, "_open_bdev", lambda rdev: os.open(path, os.O_RDONLY))
    assert ext4.journal_device(os.makedev(7, 0)) == want


def test_not_ext_is_no_journal(tmp_path, monkeypatch):
    (tmp_path / "img").write_bytes(bytes(4096))
    monkeypatch.setattr(ext4, "_open_bdev", lambda rdev: os.open(str(tmp_path / "img"), os.O_RDONLY))
    assert ext4.journal_device(os.makedev(7, 0)) is None


def test_external_journal_refused(monkeypatch):
    monkeypatch.setattr(ext4, "journal_device", lambda rdev: os.makedev(7, 1))
    sb = {"fstype": "ext4", "source": "/dev/loop0", "device": {"dev": "7:0"}}
    with pytest.raises(FsError) as e:
        ext4.TYPE.plan_device("sb-3", sb, _Plan())
    msg = e.value.strerror
    assert msg.startswith("superblock sb-3 (ext4 on /dev/loop0): its journal lies on another device (7:1)"), msg
    assert "--external mnt[/mnt/a]:KEY" in msg and "--external dev[7:0]:KEY" in msg, msg


def test_xfs_logdev_refused_before_the_stop():
    sb = {"fstype": "xfs", "source": "/dev/loop0", "super_opts": ["rw", "inode64", "logdev=/dev/loop2", "noquota"],
          "device": {"dev": "7:0"}}
    with pytest.raises(FsError) as e:
        xfs.TYPE.plan_device("sb-3", sb, _Plan())
    msg = e.value.strerror
    assert msg.startswith("superblock sb-3 (xfs on /dev/loop0): mounted with logdev=/dev/loop2, a second device"), msg
    assert "--external mnt[/mnt/a]:KEY" in msg and "\n" not in msg, msg
    # (without it: BlockType's, a loop device over a file dump archives, here none: not resolved)
    assert xfs.TYPE.plan_device("sb-3", {**sb, "super_opts": ["rw", "inode64", "noquota"], "device": {"dev": "1:3"}},
                                _Plan()) is False
