"""xfs: a block filesystem (engine/fs/_blockdev.py)."""

from engine.fs import register
from engine.fs._blockdev import BlockType

TYPE = register(BlockType("xfs", requires=("xfs",)))
