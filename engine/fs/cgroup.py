"""cgroup (v1): a hierarchy of the host, named by its controllers (`cpu,cpuacct`) or its `name=`.

A v1 hierarchy is global: mounting `cgroup` with the same controller set and name gives the
existing hierarchy back (a new superblock mount of it), whatever the mounting process's
namespaces. A mount's root is a cgroup directory of that hierarchy. Mountinfo shows the root
relative to the *reader's* cgroup namespace, and dump reads mountinfo from its own (the host's),
so restore mounts the hierarchy from its own cgroup namespace too (the same one on the same
machine), not from a stand-in in the restored namespace, and the recorded root paths are found
beneath it. A root directory missing at restore (the runtime removed the container's cgroup
when the tree was killed) is created again: an empty cgroup, which restore leaves behind.

Nothing of a cgroup's files is dumped: limits and process membership are kernel state that
mntcr does not restore (the stand-ins stay in the restorer's cgroups); only the mounts are.

Restore never makes a hierarchy that takes controllers: each controller the image names must
already be bound to one v1 hierarchy of this host with exactly that set (/proc/cgroups), since
mounting a new one would take the controllers from cgroup2 (a host change no image may ask
for). A hierarchy with no controllers (`none,name=X`) is made again if it is gone.
"""

from __future__ import annotations

import errno
import os
from engine.records import record

from engine import content, standin
from engine.fs import ON_USE, SB_FLAG_OPTS, FsError, FsType, register

# Super options cgroup1_show_options prints that are not controllers.
FLAGS = frozenset({"noprefix", "cpuset_v2_mode", "xattr", "favordynmods", "clone_children"})
# A host path the kernel runs as a program: never passed back from an image.
_DROP = frozenset({"release_agent"})


def controllers(super_opts) -> list[str]:
    """The controllers a hierarchy's super options name (`rw,cpu,cpuacct` -> [cpu, cpuacct])."""
    return [o for o in super_opts if "=" not in o and o not in FLAGS and o not in SB_FLAG_OPTS
            and o not in ("rw", "none", "all", "seclabel")]


def hierarchy_name(super_opts) -> str | None:
    """The `name=` of a hierarchy, or None."""
    return next((o.partition("=")[2] for o in super_opts if o.startswith("name=")), None)


def describe(super_opts) -> str:
    """`cpu,cpuacct` or `name=systemd` (controllers first): how messages name a hierarchy."""
    name = hierarchy_name(super_opts)
    return ",".join(controllers(super_opts) + ([f"name={name}"] if name else [])) or "none"


def host_hierarchies(proc: int | None = None) -> dict[str, int]:
    """Controller -> v1 hierarchy id on this host (0: not on a v1 hierarchy), from /proc/cgroups
    (`proc`: an fd on the host's /proc, for a caller whose root is elsewhere)."""
    out = {}
    with open(os.open("cgroups" if proc is not None else "/proc/cgroups", os.O_RDONLY | os.O_CLOEXEC,
                      dir_fd=proc)) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and not line.startswith("#"):
                out[parts[0]] = int(parts[1])
    return out


def check_bound(super_opts, bound: dict[str, int], where: str) -> None:
    """Refuse (FsError) a controller set no existing v1 hierarchy of this host has exactly."""
    wanted = controllers(super_opts)
    if not wanted:
        return
    missing = [c for c in wanted if bound.get(c, 0) == 0]
    if missing:
        known = "unknown to this kernel" if any(c not in bound for c in missing) else "on no v1 hierarchy here"
        raise FsError(errno.EOPNOTSUPP, f"{where}: controller {', '.join(missing)} {known}; restore does not "
                                        f"make a cgroup v1 hierarchy ({describe(super_opts)}) that takes "
                                        "controllers (mount it on the host first)")
    ids = {bound[c] for c in wanted}
    together = sorted(c for c, h in bound.items() if h in ids)
    if len(ids) > 1 or together != sorted(wanted):
        raise FsError(errno.EBUSY, f"{where}: this host binds controller{'s' if len(together) > 1 else ''} "
                                   f"{','.join(together)} to its v1 hierarch{'ies' if len(ids) > 1 else 'y'}, "
                                   f"not the set {describe(super_opts)} the image has")


@record(frozen=True)
class CgroupV1(FsType):
    """A cgroup v1 hierarchy: made from the restorer's cgroup namespace when a mount is first cloned."""

    @property
    def when(self) -> str:
        return ON_USE   # made by `create` (its mounts' roots are made with it), when first cloned

    def fsconfig_params(self, super_opts):
        params = [(k, v) for k, v in super().fsconfig_params(super_opts) if k not in ("none", "all")]
        if not controllers(super_opts):
            params.insert(0, ("none", None))   # a named hierarchy with the controllers of none other
        return params

    def plan(self, sid: str, sb: dict, plan) -> None:
        """Refuse a mount whose root lies outside the dumper's cgroup namespace ("/.." roots)."""
        self.precheck(sid, sb, plan)

    def precheck(self, sid: str, sb: dict, plan) -> None:
        """`plan`'s refusal, asked of the running tree too (mountinfo shows the roots)."""
        for ns in plan.mntns_doc.values():
            for e in ns["mounts"]:
                if e["sb"] == sid and (e["root"] == "/.." or e["root"].startswith("/../")):
                    raise FsError(errno.EOPNOTSUPP, f"mount {e['id']} ({e['mountpoint']}) on cgroup: its root "
                                                    f"{e['root']} lies outside the dumper's cgroup namespace; dump "
                                                    "from the host's cgroup namespace")

    def create(self, sid: str, sb: dict, ctx, where: str) -> int:
        check_bound(sb["super_opts"], host_hierarchies(ctx.hostproc), where)
        try:
            fd = standin.fsmount("cgroup", sb["source"], self.fsconfig_params(sb["super_opts"]))
        except OSError as e:
            why = {errno.EBUSY: "its controllers or name belong to another hierarchy here",
                   errno.EPERM: "a new hierarchy can be made only in the host's cgroup namespace"}.get(e.errno)
            raise FsError(e.errno or errno.EIO, f"{where}: cannot mount cgroup hierarchy "
                                                f"{describe(sb['super_opts'])}: {why or e.strerror}") from None
        try:
            roots = {m["root"] for m in list(ctx.mounts.values()) + list(ctx.detached.values())
                     if m["sb"] == sid and not m.get("ghost")}
            for root in sorted(roots - {"/"}):
                # A cgroup removed since the dump (with the container) comes back empty.
                os.close(content.mkdirs_beneath(fd, root))
        except OSError as e:
            os.close(fd)
            raise FsError(e.errno or errno.EIO, f"{where}: cannot make its cgroup directory: "
                                                f"{e.strerror or e}") from None
        return fd


TYPE = register(CgroupV1("cgroup", drop_opts=_DROP, requires=("cgroup",)))
