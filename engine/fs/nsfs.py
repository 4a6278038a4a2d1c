"""nsfs: a namespace bound on a file (`ip netns add NAME`, dockerd's exec-root/netns/ID, CNI's
/var/run/netns, `unshare --net=PATH`): mountinfo shows the type nsfs and a root like net:[N].

Every such mount is a bind of one namespace, not of a superblock restore could make: each is made
from the restored namespace it names (open_tree of an fd on it, then moved into place like any
bind: `per_mount`, `mount_source`). The image names the namespace by its id (mount `bound_ns`,
root "/"): a mount, pid, uts, ipc, net, cgroup, user or time namespace some process of the tree is
in (a time namespace also as its children's; the user namespace restore runs in when a process of
the tree is in the dumper's: OWN_USERNS, and a parent of the tree's user namespaces; a
mount namespace's bind, `unshare --mount=PATH`, lies in an older namespace: restore makes them in
order on one CPU, engine/restore.py `_one_cpu`; a namespace's copy leaves such binds out), or a
network namespace no process is in any more that only the bind keeps alive (`ip netns add` alone,
the superblock's `lone_ns`, a list of ids: restore makes it afresh, engine/netdevs.py `new_netns`).
A lone namespace's state is a process's namespace's: its own sysctls (manifest `netvars`, IPv6 off
as docker turns it off in a container's), its lo up (`net_lo_up`) and its firewall (`netfilter`),
read, compared with a fresh one and given back by engine/netvars.py, engine/netdevs.py and
engine/netfilter.py; the tree's own get theirs there too.

Refused before the stop, with a line saying how to remove the bind: the host's namespace (the
dumper's; its user namespace only when no process of the tree is in it), one a process outside the
tree is in, a lone namespace of another kind (a mount namespace too) or one a
user namespace of the tree owns, and a lone network namespace that holds what a fresh one lacks (an
interface, an address, a route, a legacy iptables table: engine/netdevs.py says which) or a
firewall rule restore would not make (engine/netfilter.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
from engine import rx

from engine import kernel
from engine.fs import FsError, FsType, register

_ROOT = rx.compile(r"^([a-z_]+):\[([0-9]+)\]\Z")
# Kinds whose restored namespace restore keeps an fd on (engine/image.py NS_KINDS, user and time namespaces).
KINDS = ("mnt", "pid", "uts", "ipc", "net", "cgroup", "user", "time")
# Where `ip netns add` binds a network namespace (iproute2's NETNS_RUN_DIR, /var/run a link to /run).
_NETNS_DIRS = ("/run/netns", "/var/run/netns")
NS_GET_USERNS = 0xB701
# The image's id of the user namespace restore runs in (the dumper's at dump), which a process of the
# tree is in: `flatpak run` as root binds it on the sandbox's /run/.userns. Binding a user namespace's
# file grants nothing (entering one takes CAP_SYS_ADMIN in it), so restore binds its own.
OWN_USERNS = "user-0"


def refuse(mount, pids) -> str | None:
    """The one-line refusal of `mount` (engine.mountinfo.Mount of type nsfs) in a tree of `pids`, or
    None when dump keeps it (a namespace of the tree; a lone network namespace, checked further by
    `precheck`) or its root names no namespace."""
    m = _ROOT.match(mount.root)
    if m is None:
        return None
    kind, ino = m.group(1), int(m.group(2))
    why = _why_not(kind, ino, pids)
    if why is None:
        return None
    return f"mount {mount.mnt_id} ({mount.mountpoint}): {why}; unmount it before dump ({_undo(kind, mount.mountpoint)})"


def _why_not(kind: str, ino: int, pids) -> str | None:
    """Why the bind of namespace `ino` of `kind` cannot be made again (the line's middle), or None."""
    if kind == "mnt" and not any(kernel.ns_ino(p, kind) == ino for p in pids):
        return ("a mount namespace no process of the tree is in is bound on it (nsfs): mntcr restores only binds of "
                "the tree's mount namespaces")
    if kind not in KINDS:
        return f"a {kind} namespace is bound on it (nsfs): mntcr restores only mnt, pid, uts, ipc, net, cgroup, user and time binds"
    if ino == kernel.ns_ino(os.getpid(), kind):
        if kind == "user" and any(kernel.ns_ino(p, kind) == ino for p in pids):
            return None   # (OWN_USERNS)
        return (f"the host's {kind} namespace (the dumper's own) is bound on it (nsfs): restore binds only namespaces "
                "it makes")
    if any(kernel.ns_ino(p, kind) == ino for p in pids) or (kind == "user" and _above_tree(ino, pids)) or (
            kind == "time" and any(kernel.ns_ino(p, "time_for_children") == ino for p in pids)):
        return None
    outside = kernel.ns_outsider(kind, ino, set(pids) | {os.getpid()})
    if outside is not None:
        return (f"a {kind} namespace process {outside}, outside the tree, is in is bound on it (nsfs): restore binds "
                "only namespaces it makes")
    if kind != "net":
        return (f"a {kind} namespace no process of the tree is in is bound on it (nsfs: one only the bind keeps "
                "alive): mntcr makes only such network namespaces again")
    return None


def _above_tree(ino: int, pids) -> bool:
    """Whether user namespace `ino` is an ancestor of a user namespace of the tree, one the image keeps
    though no process is in it (`flatpak run` by a user binds the outer of bwrap's two on
    /run/.userns: --disable-userns nests the sandbox in a second one)."""
    from engine import userns
    for pid in pids:
        try:
            fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue   # (gone: dump tells)
        while fd is not None:
            try:
                if os.fstat(fd).st_ino == ino:
                    return True
                up = userns.parent_fd(fd)
            finally:
                os.close(fd)
            fd = up
    return False


def _undo(kind: str, mountpoint: str) -> str:
    """How the user removes the bind, in the tree's mount namespace."""
    parent, name = os.path.split(mountpoint)
    if kind == "net" and parent in _NETNS_DIRS:
        return f"ip netns delete {name}, in the tree's mount namespace"
    return f"umount {mountpoint}, in the tree's mount namespace"


def _open_bound(pid: int, mountpoint: str, ino: int) -> int | str:
    """An fd on the namespace bound at `mountpoint` as process `pid` sees it (the path resolved in its
    root, through no symlink), or why it cannot be opened."""
    root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_CLOEXEC)
    try:
        fd = kernel.openat2(root, mountpoint.lstrip("/"), os.O_RDONLY | os.O_CLOEXEC,
                            kernel.RESOLVE_IN_ROOT | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        return f"it cannot be opened ({e.strerror})"
    finally:
        os.close(root)
    if os.fstat(fd).st_ino != ino:
        os.close(fd)
        return "another file covers it"
    return fd


def _owned_by_tree(fd: int) -> bool:
    """Whether a user namespace other than ours (the dumper's) owns namespace `fd`."""
    owner = fcntl.ioctl(fd, NS_GET_USERNS)
    try:
        return os.fstat(owner).st_ino != os.stat("/proc/self/ns/user").st_ino
    finally:
        os.close(owner)


class Nsfs(FsType):
    """nsfs: each mount binds the restored namespace the image names (`mount_source`)."""

    def mount_root(self, root: str, source: str, sb_source: str, where: str) -> str:
        """"/net:[N]": the rules on roots and sharing see a path, one per namespace, which covers the
        binds of that namespace alone (a mount declared --external stands for binds of its own
        namespace only); `plan` then names the namespace (`bound_ns`) and gives the image root "/"."""
        return "/" + root if _ROOT.match(root) else root

    def precheck(self, sid: str, sb: dict, plan) -> None:
        """Refuse, before the stop too, a bind restore cannot make again (one line naming it)."""
        self._bound(sid, plan)

    def plan(self, sid: str, sb: dict, plan) -> None:
        """Name the namespace each mount binds (`bound_ns`, root "/"); list the lone network namespaces
        (`lone_ns`), whose sysctls and lo go where a process's namespace's go (plan.netvars, net_lo_up)."""
        names = dict(getattr(plan, "ns_names", None) or {})
        count = sum(1 for k, _ in names if k == "net")
        lone: list[str] = []
        for e, kind, ino, net in self._bound(sid, plan, keep=True):
            name = names.get((kind, ino)) or (OWN_USERNS if kind == "user" else None)
            if name is None:
                name = names[(kind, ino)] = f"net-{count}"
                count += 1
                lone.append(name)
                kept, up, rules = net
                if kept:
                    plan.netvars[name] = kept
                if up:
                    plan.net_lo_up.add(name)
                if rules:
                    plan.netfilter[name] = rules
            e["bound_ns"], e["root"], e["dir"] = name, "/", False   # (its root "/" is a file: restore asks)
        if lone:
            sb["lone_ns"] = lone

    def _bound(self, sid: str, plan, keep: bool = False) -> list[tuple[dict, str, int, tuple | None]]:
        """(mount entry, kind, inode, for a lone network namespace (its sysctls when `keep`, whether its
        lo is up)) of each mount of `sid`; FsError for one refused."""
        pids = sorted({p for ps in plan.ns_pids.values() for p in ps})
        out = []
        seen: dict[int, tuple | None] = {}
        for ns_name, ns in plan.mntns_doc.items():
            for e in ns["mounts"]:
                if e["sb"] != sid:
                    continue
                m = plan.mounts_by_id[e["id"]]
                hit = _ROOT.match(m.root)
                if hit is None:
                    raise FsError(errno.EOPNOTSUPP, f"mount {m.mnt_id} ({m.mountpoint}): an nsfs mount whose root "
                                                    f"{m.root} names no namespace: not supported")
                line = refuse(m, pids)
                if line is not None:
                    raise FsError(errno.EOPNOTSUPP, line)
                kind, ino = hit.group(1), int(hit.group(2))
                if ino not in seen:
                    lone = kind == "net" and not any(kernel.ns_ino(p, kind) == ino for p in pids)
                    seen[ino] = self._lone(m, plan.ns_pids[ns_name][0], ino, keep) if lone else None
                out.append((e, kind, ino, seen[ino]))
        return out

    @staticmethod
    def _lone(m, pid: int, ino: int, keep: bool) -> tuple[dict, bool, dict]:
        """(its sysctls (engine/netvars.py) when `keep`, whether its lo is up, its firewall
        (engine/netfilter.py) when `keep`) of the network namespace no process of the tree is in that
        mount `m` binds (as process `pid` sees it); FsError when a user namespace of the tree owns it
        or it holds what a fresh one lacks (engine/netdevs.py) or a ruleset restore would not make."""
        from engine import netdevs, netvars
        where, undo = f"mount {m.mnt_id} ({m.mountpoint})", _undo("net", m.mountpoint)
        fd = _open_bound(pid, m.mountpoint, ino)
        if not isinstance(fd, str) and _owned_by_tree(fd):
            os.close(fd)
            fd = ("a user namespace of the tree owns it, and no process of the tree is in it (mntcr makes such "
                  "network namespaces only as the dumper's)")
        if isinstance(fd, str):
            raise FsError(errno.EOPNOTSUPP, f"{where}: the network namespace bound on it: {fd}; unmount it before "
                                            f"dump ({undo})")
        try:
            what = f"{where}: a network namespace only the bind keeps (nsfs, `ip netns add`):"
            up = netdevs.lo_up_fd(fd, what, f"unmount it before dump ({undo})")
            rules = _rules(fd, what)   # (checked before the stop too: kept only when `keep`)
            return (netvars.read_fd(fd, {}) if keep else {}), up, (rules if keep else {})
        except netdevs.NetdevError as e:
            raise FsError(e.errno, e.strerror) from None
        finally:
            os.close(fd)

    def mount_source(self, ctx, m: dict, sb: dict, where: str) -> int:
        """A detached bind of the restored namespace m binds: a process's, a lone one restore made
        (engine/netdevs.py `new_netns`), or the user namespace restore runs in (OWN_USERNS)."""
        if m["bound_ns"] == OWN_USERNS:
            own = os.open("self/ns/user", os.O_RDONLY | os.O_CLOEXEC, dir_fd=ctx.hostproc)
            try:
                return kernel.open_tree(own, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
            finally:
                os.close(own)
        fd = ctx.namespace_fd(m["bound_ns"])
        if fd is None:
            raise FsError(errno.EINVAL, f"{where}: no process of the image is in namespace {m['bound_ns']}")
        return kernel.open_tree(fd, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)



def _rules(fd: int, what: str) -> dict:
    """Network namespace `fd`'s firewall as the image keeps it (engine/netfilter.py; no device of
    it is kept: a netdev chain only on lo); NetdevError naming `what` for one restore would not make."""
    from engine import netfilter
    try:
        return netfilter.read_fd(fd)
    except netfilter.NetfilterError as e:
        raise netfilter.NetfilterError(e.errno, f"{what} {e.strerror}") from None


TYPE = register(Nsfs("nsfs", keep_source=False))
