"""ext2, ext3 and ext4: block filesystems (engine/fs/_blockdev.py).

A journal on a device of its own (`mkfs.ext4 -J device=`) is found by the kernel through the
device number the superblock keeps: restore attaches a loop device for the source alone, and the
mount failed (EUCLEAN). Dump refuses it, as it refuses a btrfs over several devices.
"""

from __future__ import annotations

import os
import struct

from engine.records import record

from engine.fs import block_recipe, register
from engine.fs._blockdev import BlockType, _open_bdev, one_device_only

_SB_OFFSET = 1024            # the superblock, in the device
_MAGIC = 0xEF53              # s_magic (le16 at 0x38)
_COMPAT_HAS_JOURNAL = 0x4    # s_feature_compat (le32 at 0x5C)
# s_journal_inum (le32 at 0xE0): 0 with a journal means the journal is on s_journal_dev (0xE4)


def journal_device(rdev: int) -> int | None:
    """The device number an ext2/3/4 superblock on block device `rdev` keeps for a journal on a
    device of its own (0 when it names none but has one there), None when its journal is internal,
    it has none, or the device cannot be read."""
    fd = _open_bdev(rdev)
    if fd is None:
        return None
    try:
        buf = os.pread(fd, 1024, _SB_OFFSET)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(buf) < 0xE8 or struct.unpack_from("<H", buf, 0x38)[0] != _MAGIC:
        return None
    compat, = struct.unpack_from("<I", buf, 0x5C)
    inum, jdev = struct.unpack_from("<II", buf, 0xE0)
    return jdev if compat & _COMPAT_HAS_JOURNAL and inum == 0 else None


@record(frozen=True)
class ExtType(BlockType):
    """ext2/3/4: refused with an external journal when restore would make the device anew."""

    def plan_device(self, sid: str, sb: dict, plan) -> bool:
        """Refuse an external journal (restore attaches one loop device); else BlockType's."""
        dev = sb["device"]["dev"]
        rdev = os.makedev(*(int(x) for x in dev.split(":")))
        jdev = journal_device(rdev)
        if jdev is not None:
            where = f"{os.major(jdev)}:{os.minor(jdev)}" if jdev else "a device it does not name"
            raise one_device_only(sid, sb, plan, f"its journal lies on another device ({where})", dev)
        return super().plan_device(sid, sb, plan)


for _name in ("ext2", "ext3"):
    register(ExtType(_name, requires=(_name,)))
TYPE = register(ExtType("ext4", requires=("ext4",), recipe=block_recipe("mkfs.ext4 -q")))
