"""xfs: a block filesystem (engine/fs/_blockdev.py)."""

from engine.fs import block_recipe, register
from engine.fs._blockdev import BlockType

TYPE = register(BlockType("xfs", requires=("xfs",),
                          recipe=block_recipe("mkfs.xfs -q -f", "300M")))
