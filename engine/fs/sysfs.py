"""sysfs: no files to dump; it belongs to a network namespace, so restore creates it from a
stand-in living in the equivalent restored one."""

from engine.fs import FsType, register

TYPE = register(FsType("sysfs", ns="net", joins_by_ns=True, requires=("sysfs",)))
