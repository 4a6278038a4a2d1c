"""mqueue: no files to dump (queues are not dumped yet); it belongs to an ipc namespace."""

from engine.fs import FsType, register

TYPE = register(FsType("mqueue", ns="ipc", joins_by_ns=True, requires=("mqueue",)))
