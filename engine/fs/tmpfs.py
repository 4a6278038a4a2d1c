"""tmpfs and ramfs: memory filesystems whose files are dumped into an archive."""

from engine.fs import FsType, register

# "inode64"/"noswap" etc. are accepted back by fsconfig; nothing to drop.
TMPFS = register(FsType("tmpfs", content=True))
RAMFS = register(FsType("ramfs", content=True))
