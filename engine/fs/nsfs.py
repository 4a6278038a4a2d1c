"""nsfs: a namespace bound on a file (`ip netns add NAME`, dockerd's exec-root/netns/ID, CNI's
/var/run/netns, `unshare --net=PATH`): mountinfo shows the type nsfs and a root like net:[N].

Every such mount is a bind of one namespace, not of a superblock restore could make: each is made
from the restored namespace it names (open_tree of an fd on it, then moved into place like any
bind: `per_mount`, `mount_source`). The image names the namespace by its id (mount `bound_ns`,
root "/"): a pid, uts, ipc, net or cgroup namespace some process of the tree is in, or a network
namespace no process is in any more that only the bind keeps alive (`ip netns add` alone, the
superblock's `lone_ns`: restore makes it afresh in a short-lived child that unshares it). A bound
network namespace gets its lo up when it was, and IPv6 off where it was (docker turns it off in a
container's); the tree's own get that through `net_state`.

Refused before the stop, with a line saying how to remove the bind: the host's namespace (the
dumper's), one a process outside the tree is in, a mount, user or time namespace, a lone namespace
of another kind or one a user namespace of the tree owns, and a bound network namespace that holds
what a fresh one lacks (an interface, an address, a route: engine/fds/inet_net.py says which).
"""

from __future__ import annotations

import errno
import os
import re
import socket

from engine import forkrun, kernel
# (imported with the module: restore makes a lone namespace after it pivoted away from the engine's files)
from engine.fds import inet_net
from engine.fs import FsError, FsType, register

_ROOT = re.compile(r"^([a-z_]+):\[([0-9]+)\]\Z")
# Kinds whose restored namespace restore keeps an fd on (engine/image.py NS_KINDS but mnt).
KINDS = ("pid", "uts", "ipc", "net", "cgroup")
# Where `ip netns add` binds a network namespace (iproute2's NETNS_RUN_DIR, /var/run a link to /run).
_NETNS_DIRS = ("/run/netns", "/var/run/netns")
NS_GET_USERNS = 0xB701


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
    if kind == "mnt":
        return ("the tree's mount namespace is bound on it (nsfs): mntcr does not restore a mount namespace bound on "
                "a file" if any(kernel.ns_ino(p, kind) == ino for p in pids) else
                "a mount namespace is bound on it (nsfs): mntcr does not restore a mount namespace bound on a file")
    if kind not in KINDS:
        return f"a {kind} namespace is bound on it (nsfs): mntcr restores only pid, uts, ipc, net and cgroup binds"
    if ino == kernel.ns_ino(os.getpid(), kind):
        return (f"the host's {kind} namespace (the dumper's own) is bound on it (nsfs): restore binds only namespaces "
                "it makes")
    if any(kernel.ns_ino(p, kind) == ino for p in pids):
        return None
    outside = kernel.ns_outsider(kind, ino, set(pids) | {os.getpid()})
    if outside is not None:
        return (f"a {kind} namespace process {outside}, outside the tree, is in is bound on it (nsfs): restore binds "
                "only namespaces it makes")
    if kind != "net":
        return (f"a {kind} namespace no process of the tree is in is bound on it (nsfs: one only the bind keeps "
                "alive): mntcr makes only such network namespaces again")
    return None


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


def _lone_state(fd: int, own_user: int | None) -> dict | str:
    """In a child: the state (engine/fds/inet_net.py `state`) of network namespace `fd`, or why it is
    not kept (`own_user`: the dumper's user namespace, which must own it when given)."""
    import fcntl
    if own_user is not None:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            if os.fstat(owner).st_ino != own_user:
                return ("a user namespace of the tree owns it, and no process of the tree is in it (mntcr makes such "
                        "network namespaces only as the dumper's)")
        finally:
            os.close(owner)
    kernel.setns(fd, kernel.CLONE_NEWNET)
    return dict(inet_net.state(), ipv6_off=_ipv6_off())


IPV6_CONFS = ("all", "default", "lo")   # (in the order restore sets them: docker disables IPv6 in a container's)


def _ipv6_off() -> list[str]:
    """Which of IPV6_CONFS our network namespace has IPv6 disabled in (net.ipv6.conf.X.disable_ipv6)."""
    out = []
    for conf in IPV6_CONFS:
        try:
            with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6") as f:
                if f.read().strip() == "1":
                    out.append(conf)
        except OSError:
            pass   # (a kernel without IPv6)
    return out


def _set_net(lo_up: bool, ipv6_off, proc: int | None = None) -> None:
    """Give our (new) network namespace what the image recorded: IPv6 off where it was, lo up. `proc`:
    a /proc to write the settings through (restore's own: it may stand in a restored root)."""
    for conf in ipv6_off:
        fd = os.open(f"{'' if proc is not None else '/proc/'}sys/net/ipv6/conf/{conf}/disable_ipv6",
                     os.O_WRONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
    if lo_up:
        inet_net.set_lo_up()


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
        """Name the namespace each mount binds (`bound_ns`, root "/"); record the lone network namespaces
        (`lone_ns`) and the state of the tree's own bound ones (`net_state`): lo up or down, IPv6 off."""
        names = dict(getattr(plan, "ns_names", None) or {})
        count = sum(1 for k, _ in names if k == "net")
        lone: dict[str, dict] = {}
        state: dict[str, dict] = {}
        for e, kind, ino, net in self._bound(sid, plan):
            name = names.get((kind, ino))
            if name is None:
                name = names[(kind, ino)] = f"net-{count}"
                count += 1
                lone[name] = net
            elif net is not None and name not in lone:
                state[name] = net
            e["bound_ns"], e["root"], e["dir"] = name, "/", False   # (its root "/" is a file: restore asks)
        if lone:
            sb["lone_ns"] = lone
        if state:
            sb["net_state"] = state

    def _bound(self, sid: str, plan) -> list[tuple[dict, str, int, dict | None]]:
        """(mount entry, kind, inode, the record of a network namespace: {lo, ipv6_off?}) of each mount of
        `sid`; FsError for one refused."""
        pids = sorted({p for ps in plan.ns_pids.values() for p in ps})
        out = []
        seen: dict[int, dict] = {}
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
                if kind == "net" and ino not in seen:
                    lone = not any(kernel.ns_ino(p, kind) == ino for p in pids)
                    seen[ino] = self._net_lo(m, plan.ns_pids[ns_name][0], ino, lone)
                out.append((e, kind, ino, seen.get(ino)))
        return out

    @staticmethod
    def _net_lo(m, pid: int, ino: int, lone: bool) -> dict:
        """{lo: up or down, ipv6_off?: [...]} of the network namespace bound by mount `m` (as process
        `pid` sees it); FsError when it holds what a fresh one given the same lacks (restore makes a
        fresh one: for the tree's own too, engine/fds/inet.py), or, `lone` (no process of the tree is
        in it), when a user namespace of the tree owns it."""
        where = f"mount {m.mnt_id} ({m.mountpoint})"
        fd = have = _open_bound(pid, m.mountpoint, ino)
        if not isinstance(fd, str):
            try:
                have = forkrun.run(_lone_state, fd, os.stat("/proc/self/ns/user").st_ino if lone else None)
            finally:
                os.close(fd)
        if isinstance(have, str):
            raise FsError(errno.EOPNOTSUPP, f"{where}: the network namespace bound on it: {have}; unmount it before "
                                            f"dump ({_undo('net', m.mountpoint)})")
        off = have.pop("ipv6_off")
        lo = inet_net.differs(have, _fresh(tuple(off)))
        if isinstance(lo, str):
            whose = "a network namespace only the bind keeps" if lone else "the tree's network namespace bound on it"
            raise FsError(errno.EOPNOTSUPP, f"{where}: {whose} (nsfs, `ip netns add`): {lo}; unmount it before dump "
                                            f"({_undo('net', m.mountpoint)})")
        return {"lo": "up" if lo else "down", **({"ipv6_off": off} if off else {})}

    def mount_source(self, ctx, m: dict, sb: dict, where: str) -> int:
        """A detached bind of the restored namespace m binds: a process's (its lo brought up and IPv6
        turned off as recorded), or a lone one made now."""
        nsid = m["bound_ns"]
        lone = (sb.get("lone_ns") or {}).get(nsid)
        fd = _make_lone(lone, ctx.hostproc) if lone is not None else ctx.namespace_fd(nsid)
        if fd is None:
            raise FsError(errno.EINVAL, f"{where}: no process of the image is in namespace {nsid}")
        try:
            net = (sb.get("net_state") or {}).get(nsid)
            if lone is None and net is not None:
                forkrun.run(_set_net_in, fd, net["lo"] == "up", net.get("ipv6_off") or (), ctx.hostproc)
            return kernel.open_tree(fd, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
        finally:
            if lone is not None:
                os.close(fd)


def _set_net_in(fd: int, lo_up: bool, ipv6_off, proc: int) -> None:
    """In a child: give network namespace `fd` what the image recorded (`_set_net`)."""
    kernel.setns(fd, kernel.CLONE_NEWNET)
    _set_net(lo_up, ipv6_off, proc)


_FRESH: dict = {}


def _fresh(ipv6_off: tuple = ()) -> tuple[dict, dict]:
    """A fresh network namespace's state with IPv6 off in `ipv6_off`, before and after its lo comes up
    (engine/fds/inet_net.py), read once a run."""
    if ipv6_off not in _FRESH:
        _FRESH[ipv6_off] = forkrun.run(_fresh_in, ipv6_off, unshare_flags=kernel.CLONE_NEWNET)
    return _FRESH[ipv6_off]


def _fresh_in(ipv6_off) -> tuple[dict, dict]:
    _set_net(False, ipv6_off)
    return inet_net.fresh_state()


def _make_lone(rec: dict, proc: int) -> int:
    """An fd on a new network namespace as `rec` ({lo, ipv6_off?}) says, made by a child that unshares
    it and sends it back; the child ends, the fd (then the bind) keeps it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        forkrun.run(_unshare_and_send, theirs.fileno(), rec["lo"] == "up", rec.get("ipv6_off") or (), proc,
                    unshare_flags=kernel.CLONE_NEWNET)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    finally:
        ours.close()
        theirs.close()
    if len(fds) != 1:
        raise FsError(errno.EIO, "the helper making a network namespace sent none")
    return fds[0]


def _unshare_and_send(sock: int, lo_up: bool, ipv6_off, proc: int) -> None:
    """In a child that unshared its network namespace: set it up (`_set_net`), send an fd on it."""
    _set_net(lo_up, ipv6_off, proc)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
        fd = inet_net.netns_fd(probe.fileno())   # (no /proc needed: the restorer may stand in a restored root)
    s = socket.socket(fileno=os.dup(sock))
    try:
        socket.send_fds(s, [b"n"], [fd])
    finally:
        s.close()
        os.close(fd)


TYPE = register(Nsfs("nsfs", keep_source=False))
