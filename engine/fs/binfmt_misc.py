"""binfmt_misc: a pseudo filesystem with no files to dump (registered formats are the host's)."""

from engine.fs import FsType, register

TYPE = register(FsType("binfmt_misc", host_global=True, requires=("binfmt_misc",)))
