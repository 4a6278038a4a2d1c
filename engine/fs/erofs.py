"""erofs: a block filesystem (engine/fs/_blockdev.py)."""

from engine.fs import Recipe, register
from engine.fs._blockdev import BlockType

TYPE = register(BlockType("erofs", requires=("erofs",), recipe=Recipe(
    # read-only by nature: the image is built from SRC
    make='mkfs.erofs "$WORK/img" "$SRC" >/dev/null\nmount -t erofs -o loop,ro "$WORK/img" "$FS"',
    commands=("mkfs.erofs", "losetup"), loop=True)))
