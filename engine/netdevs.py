"""The devices of the tree's network namespaces, which restore does not make: a namespace that holds
more than a fresh one (lo, and the fallback tunnel devices the host's modules add, all down) is
refused, before the stop, in one line; whether its lo is up is kept.

Restore makes a fresh network namespace for the tree; engine/fds/inet_net.py refused what it would
lack for a namespace holding an inet socket. One without (a tun device's holder, an address or a
route added to lo, a veth, a sub-namespace's bridge) came back as a fresh one, silently, and lo
down even where it was up. Now every network namespace of the tree that is not the dumper's is
compared with a fresh one the same way (interfaces, the ones up, addresses, routes, multicast
memberships: inet_net.differs), and so is each one only a bind keeps (engine/fs/nsfs.py, which
restore makes afresh: `new_netns`); its lo comes back up when it was (image "net_lo_up"). Firewall
rules are not kept either: a namespace holding a legacy iptables table a fresh one lacks
(/proc/net/ip_tables_names: made by the first rule or listing in that namespace) is refused too
(nftables' are not seen: not kept, not refused).
"""

from __future__ import annotations

import errno
import os

__all__ = ["NetdevError", "lo_up", "lo_up_fd", "new_netns", "precheck", "set_lo_up_in"]

_WHAT_TO_DO = "dump a tree whose network namespace holds only lo (devices, addresses, routes and firewall rules are not kept)"


class NetdevError(OSError):
    """A network namespace restore would not make as it is; the message is one line."""


def lo_up(pid: int) -> bool:
    """Whether process `pid`'s network namespace has its lo up; NetdevError when the namespace holds
    what a fresh one lacks (the caller passes over the dumper's own namespace)."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return lo_up_fd(fd, f"process {pid}:", _WHAT_TO_DO)
    finally:
        os.close(fd)


def lo_up_fd(fd: int, what: str, to_do: str) -> bool:
    """Whether network namespace `fd` has its lo up; NetdevError "`what` why: not supported; `to_do`"
    when it holds what a fresh one lacks."""
    from engine.fds import inet_net   # (its socket module only for a tree with a network namespace)
    fresh = inet_net.fresh_pair()
    have = inet_net.state_of(fd)
    why = inet_net.differs(have, fresh, loopback_follows=True)
    if isinstance(why, str):
        raise NetdevError(errno.EOPNOTSUPP, f"{what} {why}; {to_do}")
    extra = sorted(set(have.get("tables", ())) - set(fresh[0].get("tables", ())))
    if extra:
        raise NetdevError(errno.EOPNOTSUPP, f"{what} its network namespace has firewall tables ({', '.join(extra)}), "
                                            f"whose rules restore does not make: not supported; {to_do}")
    return why


def precheck(pids: list[int]) -> None:
    """Before the stop: refuse (NetdevError, one line) a network namespace of `pids` (not the
    dumper's) a fresh one would not give back."""
    own = os.stat("/proc/self/ns/net").st_ino
    seen = {own}
    for pid in pids:
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue   # (gone meanwhile: dump tells once the tree is stopped)
        if ino in seen:
            continue
        seen.add(ino)
        lo_up(pid)


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
