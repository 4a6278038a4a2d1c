"""Pseudo filesystems with no files to dump, some tagged with a namespace.

proc belongs to a pid namespace, mqueue to an ipc namespace, sysfs to a
network namespace and cgroup2 to a cgroup namespace: restore creates each
from a stand-in process that lives in the equivalent restored namespace.
"""

from engine.fs import FsType, register

PROC = register(FsType("proc", ns="pid"))
SYSFS = register(FsType("sysfs", ns="net"))
MQUEUE = register(FsType("mqueue", ns="ipc"))
# cgroup2 options (nsdelegate, memory_recursiveprot) belong to the single hierarchy.
CGROUP2 = register(FsType("cgroup2", ns="cgroup", no_opts=True))
# devpts always creates a new instance with the new mount API; a new instance has no pty yet.
DEVPTS = register(FsType("devpts", fresh_roots=frozenset({"/", "/ptmx"})))
BINFMT_MISC = register(FsType("binfmt_misc"))
