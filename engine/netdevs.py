"""The devices of the tree's network namespaces: those the image keeps (veth pairs, bridges, dummies, tuns,
with their addresses and routes: engine/netlinks.py, made again by engine/netlinks_make.py), and
whether lo is up; a namespace that holds more than a fresh one (lo, and the fallback tunnel devices
the host's modules add, all down) and those is refused, before the stop, in one line, and so is a
veth whose peer is outside the tree unless it is declared (`--external veth[NAME]:KEY`).

Restore makes a fresh network namespace for the tree, then its devices; engine/fds/inet_net.py
refuses what it would lack for a namespace holding an inet socket. Every network namespace of the
tree that is not the dumper's is compared with a fresh one the same way (interfaces, the ones up,
addresses, routes, multicast memberships: inet_net.differs, passing over what the image keeps), and
so is each one only a bind keeps (engine/fs/nsfs.py, which restore makes afresh: `new_netns`: its
devices are not kept); its lo comes back up when it was (image "net_lo_up"). Its nftables tables
(iptables-nft's too) are kept by engine/netfilter.py; a legacy iptables table a fresh
namespace lacks (/proc/net/ip_tables_names: made by the first rule or listing in that namespace) is
refused.
"""

from __future__ import annotations

import errno
import os
from engine import rx

__all__ = ["NetdevError", "collect", "external_veth", "parse_externals", "lo_up_fd", "new_netns", "precheck", "set_lo_up_in"]

_WHAT_TO_DO = ("dump a tree whose network namespace holds only lo and veth, bridge or dummy devices (and tun devices "
               "whose fds the tree holds; other devices and legacy iptables tables are not kept)")


_EXT_VETH = rx.compile(r"^veth\[(?P<name>[^\]/\s]{1,15})\]:(?P<key>[A-Za-z0-9_.:+-]{1,64})$")


def external_veth(spec: str):
    """The match of a dump --external veth[NAME]:KEY (NAME a veth of the tree whose peer is outside
    it, KEY what restore is given for it), or None."""
    return _EXT_VETH.match(spec)


def parse_externals(specs) -> dict[str, str]:
    """{NAME: KEY} of the dump's --external veth[NAME]:KEY."""
    return {m["name"]: m["key"] for m in map(external_veth, specs) if m}


class NetdevError(OSError):
    """A network namespace restore would not make as it is; the message is one line."""


def lo_up_fd(fd: int, what: str, to_do: str, covered: dict | None = None) -> bool:
    """Whether network namespace `fd` has its lo up; NetdevError "`what` why: not supported; `to_do`"
    when it holds what a fresh one lacks beyond what the image keeps (`covered`: netlinks.read's; its
    nftables tables: engine/netfilter.py's)."""
    from engine.fds import inet_net   # (its socket module only for a tree with a network namespace)
    fresh = inet_net.fresh_pair()
    have = inet_net.state_of(fd)
    why = inet_net.differs(have, fresh, loopback_follows=True, covered=covered)
    if isinstance(why, str):
        raise NetdevError(errno.EOPNOTSUPP, f"{what} {why}; {to_do}")
    extra = sorted(t for t in set(have.get("tables", ())) - set(fresh[0].get("tables", ())) if not t.startswith("nft "))
    if extra:
        raise NetdevError(errno.EOPNOTSUPP, f"{what} its network namespace has firewall tables ({', '.join(extra)}) "
                                            "(iptables-legacy's: use iptables-nft), "
                                            f"whose rules restore does not make: not supported; {to_do}")
    return why


def collect(nets: dict[str, int], ext_veths: dict[str, str]) -> tuple[dict[str, dict], set[str]]:
    """({ns id: devices the image keeps (manifest "netdevs")}, {ns id whose lo is up}) of the tree's
    network namespaces `nets` ({ns id: a pid in it}, never the dumper's); `ext_veths`: {NAME: KEY}
    of --external veth[NAME]:KEY. NetdevError, one line, for what restore would not make."""
    if not nets:
        return {}, set()   # (the tree is in the dumper's namespace: no socket module for it)
    from engine import netlinks
    fds = {}
    try:
        for nsid, pid in nets.items():
            fds[nsid] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            kept, covered = netlinks.read(fds, ext_veths)
        except netlinks.NetlinkError as e:
            raise NetdevError(e.errno, f"{e.strerror}; {_WHAT_TO_DO}") from None
        up = {nsid for nsid, fd in fds.items()
              if lo_up_fd(fd, f"process {nets[nsid]}:", _WHAT_TO_DO, covered[nsid])}
        return kept, up
    finally:
        for fd in fds.values():
            os.close(fd)


def tun_held_outside(kept: dict[str, dict], procs: list[dict]) -> str | None:
    """Why dump refuses a tun device of `kept` (collect's) some of whose fds the tree's processes
    `procs` do not hold (engine/tundev.py held_outside), or None."""
    if not any(lk["kind"] == "tun" for rec in kept.values() for lk in rec.get("links", ())):
        return None
    from engine import tundev
    return tundev.held_outside(kept, procs)


def precheck(pids: list[int], ext_veths: dict[str, str] | None = None) -> None:
    """Before the stop: refuse (NetdevError, one line) a network namespace of `pids` (not the
    dumper's) restore would not give back as it is (`collect`)."""
    own = os.stat("/proc/self/ns/net").st_ino
    nets: dict[str, int] = {}
    for pid in pids:
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue   # (gone meanwhile: dump tells once the tree is stopped)
        if ino != own:
            nets.setdefault(f"net:{ino}", pid)
    if nets:
        try:
            from engine import netfilter
            netfilter.collect(nets, collect(nets, ext_veths or {})[0])
        except FileNotFoundError:
            pass   # (a process gone meanwhile: dump tells once the tree is stopped)


def _up_in(fd: int) -> None:
    from engine import kernel
    from engine.fds import inet_net
    kernel.setns(fd, kernel.CLONE_NEWNET)
    inet_net.set_lo_up()


def set_lo_up_in(fd: int) -> None:
    """Bring lo up in network namespace `fd` (never the caller's own: NetdevError)."""
    from engine import forkrun
    if os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino:
        raise NetdevError(errno.EINVAL, "the network namespace is the restorer's own")
    forkrun.run(_up_in, fd)


def new_netns() -> int:
    """An fd on a new network namespace (a namespace only a bind keeps: engine/fs/nsfs.py), made by a
    child that unshares it and sends it back; the child ends, the fd keeps it."""
    import socket
    from engine import forkrun, kernel
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        forkrun.run(_unshare_and_send, theirs.fileno(), unshare_flags=kernel.CLONE_NEWNET)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    finally:
        ours.close()
        theirs.close()
    if len(fds) != 1:
        raise NetdevError(errno.EIO, "the helper making a network namespace sent none")
    return fds[0]


def _unshare_and_send(sock: int) -> None:
    """In a child that unshared its network namespace: send an fd on it (SIOCGSKNS: no /proc needed)."""
    import socket
    from engine.fds import inet_net
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
        fd = inet_net.netns_fd(probe.fileno())
    s = socket.socket(fileno=os.dup(sock))
    try:
        socket.send_fds(s, [b"n"], [fd])
    finally:
        s.close()
        os.close(fd)


def externals_of(doc: dict) -> set[str]:
    """The restore externals ("veth:KEY") the image's devices need: a veth whose peer was outside the tree."""
    return {"veth:" + lk["peer"]["external"] for rec in (doc.get("netdevs") or {}).values()
            for lk in rec.get("links", ()) if "external" in (lk.get("peer") or {})}


def outer_name(spec: str) -> tuple[str, str | None]:
    """(OUTER, BRIDGE or None) of a restore --external veth[KEY]:OUTER[@BRIDGE]; ValueError when malformed."""
    from engine import netlinks_make
    return netlinks_make.outer_of(spec)


def make_devices(nsfd_of: dict, netdevs: dict, ext: dict) -> None:
    """Make the image's devices (manifest "netdevs") in the network namespaces restore made
    (`nsfd_of`: {("net", ns id): fd}); `ext`: restore's externals (veth:KEY -> OUTER[@BRIDGE])."""
    if not netdevs:
        return
    from engine import netlinks_make
    fds = {nsid: fd for (kind, nsid), fd in nsfd_of.items() if kind == "net"}
    netlinks_make.make(fds, netdevs, {k: v for k, v in ext.items() if type(k) is str and k.startswith("veth:")})
