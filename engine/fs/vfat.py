"""vfat: a block filesystem (engine/fs/_blockdev.py)."""

from engine.fs import block_recipe, register
from engine.fs._blockdev import BlockType

TYPE = register(BlockType("vfat", requires=("vfat",),
                          recipe=block_recipe("mkfs.vfat", "64M", copy="cp -r")))
