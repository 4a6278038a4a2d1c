"""devtmpfs: the kernel's one device filesystem (a host's /dev); every mount of it is that one
superblock (CRIU's devtmpfs: mounted again, no contents).

A tree that inherited the host's mounts (`unshare -m`) has it at /dev. Nothing of it is dumped:
the kernel fills it with the machine's device nodes, and mounting `devtmpfs` at restore gives
that same superblock back (so its options are not passed: they belong to it). Nodes a user made
in it are the machine's, and are there or not at restore as the machine has them.
"""

from engine.fs import FsType, register

TYPE = register(FsType("devtmpfs", no_opts=True, host_global=True, requires=("devtmpfs",)))
