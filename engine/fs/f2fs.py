"""f2fs: a block filesystem (engine/fs/_blockdev.py)."""

from engine.fs import block_recipe, register
from engine.fs._blockdev import BlockType

TYPE = register(BlockType("f2fs", requires=("f2fs",),
                          recipe=block_recipe("mkfs.f2fs -q", "128M")))
