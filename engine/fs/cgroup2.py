"""cgroup2: the one hierarchy, seen through a cgroup namespace."""

from engine.fs import FsType, register

# Its options (nsdelegate, memory_recursiveprot) belong to the single hierarchy.
TYPE = register(FsType("cgroup2", ns="cgroup", joins_by_ns=True, no_opts=True, requires=("cgroup2",)))
