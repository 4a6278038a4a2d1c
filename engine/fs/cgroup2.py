"""cgroup2: the one hierarchy, seen through a cgroup namespace."""

from engine.fs import FsType, register

# Its options (nsdelegate, memory_recursiveprot) belong to the single hierarchy.
# (a mount of a cgroup below its namespace's root: gone with the container, or an image of another
# machine; restore does not make cgroups of the host's hierarchy)
TYPE = register(FsType("cgroup2", ns="cgroup", joins_by_ns=True, no_opts=True, requires=("cgroup2",),
                       missing_root="no such cgroup here: create it (mkdir in this machine's cgroup2 hierarchy, "
                                    "below the cgroup namespace restore makes or joins) and restore again"))
