"""ramfs: a memory filesystem whose files are dumped into an archive."""

from engine import kernel
from engine.fs import FsType, Recipe, register

TYPE = register(FsType("ramfs", content=True, magic=kernel.RAMFS_MAGIC, requires=("ramfs",),
                       recipe=Recipe(make='mount -t ramfs battery "$FS"\ncp -a "$SRC/." "$FS/"')))
