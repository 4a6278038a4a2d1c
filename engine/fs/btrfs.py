"""btrfs: a block filesystem (engine/fs/_blockdev.py) whose subvolume options name paths inside it."""

from engine.fs import block_recipe, register
from engine.fs._blockdev import BlockType

# subvol=/x and subvolid select what the mount shows: its root says the same, and fsconfig
# would mount that subvolume as the superblock's root.
TYPE = register(BlockType("btrfs", drop_opts=frozenset({"subvol", "subvolid"}), requires=("btrfs",),
                          recipe=block_recipe("mkfs.btrfs -q", "128M")))
