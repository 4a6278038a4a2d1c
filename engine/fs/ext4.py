"""ext2, ext3 and ext4: block filesystems (engine/fs/_blockdev.py)."""

from engine.fs import block_recipe, register
from engine.fs._blockdev import BlockType

for _name in ("ext2", "ext3"):
    register(BlockType(_name, requires=(_name,)))
TYPE = register(BlockType("ext4", requires=("ext4",), recipe=block_recipe("mkfs.ext4 -q")))
