"""mqueue: no files to dump here; it belongs to an ipc namespace, whose queues engine/sysvipc.py
dumps and makes again with the namespace."""

from engine.fs import FsType, register

TYPE = register(FsType("mqueue", ns="ipc", joins_by_ns=True, requires=("mqueue",)))
