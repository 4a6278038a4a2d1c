"""debugfs: a pseudo filesystem with no files dump could keep; made again by fsmount at restore.

On a host it is often a slave of the host's own mount (LXC binds it in: external slavery,
declare that mount --external); a mount of its own in the container is made again fresh.
"""

from engine.fs import FsType, pseudo_recipe, register

TYPE = register(FsType("debugfs", host_global=True, requires=("debugfs",), recipe=pseudo_recipe("debugfs")))
