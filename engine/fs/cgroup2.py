"""cgroup2: the one hierarchy, seen through a cgroup namespace."""

from engine.fs import FsType, register

# Its options (nsdelegate, memory_recursiveprot) belong to the single hierarchy.
TYPE = register(FsType("cgroup2", ns="cgroup", no_opts=True, one_per_ns=True, requires=("cgroup2",)))
