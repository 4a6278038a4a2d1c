"""exfat: a block filesystem (engine/fs/_blockdev.py)."""

from engine.fs import block_recipe, register
from engine.fs._blockdev import BlockType

TYPE = register(BlockType("exfat", requires=("exfat",),
                          recipe=block_recipe("mkfs.exfat", "64M", copy="cp -r")))
