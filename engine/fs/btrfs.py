"""btrfs: a block filesystem (engine/fs/_blockdev.py) whose subvolume options name paths inside it."""

from engine.fs import block_recipe, register
from engine.fs._blockdev import BlockType

# subvol=/x and subvolid select what the mount shows: its root says the same, and fsconfig
# would mount that subvolume as the superblock's root.
TYPE = register(BlockType("btrfs", drop_opts=frozenset({"subvol", "subvolid"}), requires=("btrfs",),
                          recipe=block_recipe("mkfs.btrfs -q", "128M", known_failures=(
                              ("lazy", "files on btrfs show the subvolume's anonymous device, not the one "
                                       "mountinfo shows: a lazily unmounted mount of it is not matched to "
                                       "its superblock (engine/dump.py _plan_detached)"),))))
