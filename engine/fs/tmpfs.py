"""tmpfs: a memory filesystem whose files are dumped into an archive."""

from engine import kernel
from engine.fs import FsType, Recipe, register

# "inode64"/"noswap" etc. are accepted back by fsconfig; nothing to drop.
# uid=/gid= (the root directory's owner): shown in the initial namespace's ids (shmem_show_options).
TYPE = register(FsType("tmpfs", content=True, magic=kernel.TMPFS_MAGIC, requires=("tmpfs",),
                       id_opts=(("uid", "uid"), ("gid", "gid")),
                       recipe=Recipe(make='mount -t tmpfs -o size=64m battery "$FS"\ncp -a "$SRC/." "$FS/"')))
