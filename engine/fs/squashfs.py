"""squashfs: a block filesystem (engine/fs/_blockdev.py)."""

from engine.fs import Recipe, register
from engine.fs._blockdev import BlockType

TYPE = register(BlockType("squashfs", requires=("squashfs",), recipe=Recipe(
    # read-only by nature: the image is built from SRC
    make='mksquashfs "$SRC" "$WORK/img" -quiet -no-progress -noappend >/dev/null\nmount -o loop,ro "$WORK/img" "$FS"',
    commands=("mksquashfs", "losetup"), loop=True)))
