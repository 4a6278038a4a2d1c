"""ext2, ext3 and ext4: block filesystems (engine/fs/_blockdev.py)."""

from engine.fs import register
from engine.fs._blockdev import BlockType

for _name in ("ext2", "ext3", "ext4"):
    register(BlockType(_name, requires=(_name,)))
