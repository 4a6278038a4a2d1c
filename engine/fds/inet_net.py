"""The network namespace an inet socket lives in, as restore makes it again: a fresh namespace
(unshare), holding what a fresh one holds (lo, and the fallback tunnel devices the host's modules
add, all down), with lo brought up when it was up (which gives it 127.0.0.1/8 and ::1), and the
devices, addresses and routes the image keeps (engine/netlinks.py).

Dump refuses, for a namespace holding an inet socket, what that fresh namespace would lack, beyond
the devices, addresses and routes the image keeps (engine/netlinks.py: veth, bridge, dummy and tun links
and what is on them): another interface, an interface other than lo and those that is up, an
address, a route or a multicast membership (a socket's: not kept) other than those; and a
namespace restore would not make: the dumper's own (the host's ports are not restore's to take), one a process outside the tree is in or one bound
to a file in the dumper's mount namespace (`ip netns add`, a runtime's netns file): its other users
would not see the restored sockets.

Not compared, and not kept: policy routing rules, neighbours. The namespace's sysctls are kept
(engine/netvars.py); its firewall tables (nftables', legacy iptables') are refused by
engine/netdevs.py, which compares every network namespace of the tree this way.

Compared through rtnetlink (RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE) and /proc/self/net/igmp(6) in a
child that joins the namespace, against a fresh namespace made by a child (unshare), before and
after its lo comes up.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from engine import forkrun, kernel
from engine.rtnl import attrs   # (netlink attributes: one parser for rtnetlink and the diag sockets)

RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
IFLA_IFNAME, IFA_ADDRESS, IFA_LOCAL = 3, 1, 2
RTA_DST, RTA_OIF, RTA_TABLE = 1, 4, 15
IFF_UP = 1
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCGSKNS = 0x894C


def netlink_dump(proto: int, typ: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
    """[(message type, payload)] of a netlink dump request `typ` with `body` on a socket of netlink
    protocol `proto` (NETLINK_ROUTE 0, NETLINK_SOCK_DIAG 4); an error reply raises OSError naming `what`."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
    try:
        s.send(struct.pack("=IHHII", 16 + len(body), typ, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        out = []
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                ln, mtype = struct.unpack_from("=IH", data, off)
                if mtype == 3:   # NLMSG_DONE
                    return out
                if mtype == 2:   # NLMSG_ERROR
                    raise OSError(-struct.unpack_from("=i", data, off + 16)[0], what)
                out.append((mtype, data[off + 16: off + ln]))
                off += (ln + 3) & ~3
    finally:
        s.close()


def _dump(typ: int, body: bytes) -> list[tuple[int, bytes]]:
    """[(message type, payload)] of an rtnetlink dump request."""
    return netlink_dump(0, typ, body, "rtnetlink")


def state() -> dict:
    """Our network namespace: {"links": {name: up}, "addrs": sorted ["NAME ADDR/PREFIX"], "routes": sorted
    ["table T type Y DST/LEN dev NAME"]} (its IPv4 and IPv6 routes, in every table)."""
    names, links = {}, {}
    for _t, msg in _dump(RTM_GETLINK, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)):
        _fam, _typ, index, flags, _change = struct.unpack_from("=BxHiII", msg)
        name = attrs(msg, 16).get(IFLA_IFNAME, b"?\0").split(b"\0")[0].decode(errors="replace")
        names[index], links[name] = name, bool(flags & IFF_UP)
    addrs = []
    for _t, msg in _dump(RTM_GETADDR, struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)):
        fam, prefix, _flags, _scope, index = struct.unpack_from("=BBBBI", msg)
        a = attrs(msg, 8)
        raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS) or b""
        addr = socket.inet_ntop(fam, raw) if fam in (socket.AF_INET, socket.AF_INET6) and raw else "?"
        addrs.append(f"{names.get(index, index)} {addr}/{prefix}")
    routes = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for _t, msg in _dump(RTM_GETROUTE, struct.pack("=BBBBBBBBI", fam, 0, 0, 0, 0, 0, 0, 0, 0)):
            _f, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = struct.unpack_from("=BBBBBBBBI", msg)
            a = attrs(msg, 12)
            dst = socket.inet_ntop(fam, a[RTA_DST]) if RTA_DST in a else "default"
            oif = struct.unpack("=I", a[RTA_OIF])[0] if RTA_OIF in a else 0
            table = struct.unpack("=I", a[RTA_TABLE])[0] if RTA_TABLE in a else table
            routes.append(f"table {table} type {rtype} {dst}/{dst_len} dev {names.get(oif, oif)}")
    return {"links": links, "addrs": sorted(addrs), "routes": sorted(routes), "mcast": _memberships(),
            "tables": _tables(), "lo_v6_off": _lo_v6_off()}


def _lo_v6_off() -> bool:
    """Whether our namespace's lo has IPv6 turned off (disable_ipv6: no ::1 then)."""
    try:
        with open("/proc/sys/net/ipv6/conf/lo/disable_ipv6") as f:
            return f.read().strip() == "1"
    except OSError:
        return False   # (no IPv6 in this kernel: a fresh namespace has none either)


_NFT_FAMILIES = {1: "inet", 2: "ip", 3: "arp", 7: "bridge", 10: "ip6", 5: "netdev"}


def _nft_tables() -> list[str]:
    """Our namespace's nftables tables ("nft ip filter"...: iptables-nft's too), by NFT_MSG_GETTABLE."""
    try:
        got = netlink_dump(12, (10 << 8) | 1, struct.pack("=BBH", socket.AF_UNSPEC, 0, 0), "nftables")
    except OSError:
        return []   # (no nf_tables in this kernel: no table anywhere)
    out = []
    for _t, msg in got:
        name = attrs(msg, 4).get(1, b"?\0").split(b"\0")[0].decode(errors="replace")   # NFTA_TABLE_NAME
        out.append(f"nft {_NFT_FAMILIES.get(msg[0], msg[0])} {name}")
    return out


def _tables() -> list[str]:
    """Our namespace's firewall tables: nftables' and legacy iptables' ("ip6 filter"...), made by a
    first rule or listing."""
    out = _nft_tables()
    for fam, name in (("ip", "ip_tables_names"), ("ip6", "ip6_tables_names"), ("arp", "arp_tables_names")):
        try:
            with open(f"/proc/self/net/{name}") as f:
                out += [f"{fam} {t.strip()}" for t in f if t.strip()]
        except OSError:
            pass   # (the module is not loaded: no table anywhere)
    return sorted(out)


def _memberships() -> list[str]:
    """Our namespace's multicast memberships, "DEV GROUP USERS" ("/proc/self/net": a socket's
    IP_ADD_MEMBERSHIP shows there only, and a fresh namespace's lo has the all-hosts groups)."""
    out = []
    try:
        with open("/proc/self/net/igmp") as f:
            dev = "?"
            for line in f.read().splitlines()[1:]:
                if line[:1].isdigit():
                    dev = line.split()[1]
                elif line.strip():
                    group, users = line.split()[:2]
                    out.append(f"{dev} {group} {users}")
        with open("/proc/self/net/igmp6") as f:
            out += [" ".join(line.split()[1:4]) for line in f if line.strip()]
    except FileNotFoundError:
        pass   # (a kernel without IPv4 or IPv6 multicast)
    return sorted(out)


def state_of(fd: int) -> dict:
    """`state` of network namespace `fd`, read in a child that joins it."""
    return forkrun.run(_state_of, fd)


_FRESH: list[tuple[dict, dict]] = []


def fresh_pair() -> tuple[dict, dict]:
    """A fresh network namespace's state, before and after its lo comes up (a child unshares one),
    read once a process: every comparison with a fresh namespace uses it."""
    if not _FRESH:
        _FRESH.append(forkrun.run(fresh_state, unshare_flags=kernel.CLONE_NEWNET))
    return _FRESH[0]


def _state_of(fd: int) -> dict:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    return state()


def fresh_state() -> tuple[dict, dict]:
    """(a fresh network namespace's state, the same once its lo is up): we are a child that unshared it."""
    before = state()
    set_lo_up()
    return before, state()


def set_lo_up() -> None:
    """Bring our network namespace's lo up (SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        req = bytearray(fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0)))
        flags = struct.unpack_from("H", req, 16)[0]
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def netns_fd(sock_fd: int) -> int:
    """An fd on the network namespace socket `sock_fd` belongs to (SIOCGSKNS)."""
    return fcntl.ioctl(sock_fd, SIOCGSKNS)


def check(d, ns: int, where: str) -> tuple[int, bool]:
    """(inode of network namespace `ns` (our fd on a socket's: netns_fd), whether its lo is up);
    refuses (FdError naming `where`) a namespace restore would not make again as it is: not the
    socket's holder's, the dumper's, one holding a process outside the tree or bound to a file, or
    one holding what a fresh one lacks. Read once per namespace and dump (d.scratch)."""
    from engine.fds import FdError
    ino = os.fstat(ns).st_ino
    if ino == os.stat("/proc/self/ns/net").st_ino:
        raise FdError(errno.EOPNOTSUPP, f"{where}: an inet socket of the host's network namespace (the dumper's "
                                        "own: restore makes inet sockets only in one it creates): not supported; "
                                        "run the tree in a network namespace of its own (unshare -n)")
    if ino != os.stat(f"/proc/{d.pid}/ns/net").st_ino:
        raise FdError(errno.EOPNOTSUPP, f"{where}: an inet socket of another network namespace than its "
                                        "process's: not supported")
    key = ("inet-netns", ino)
    known = d.scratch.get(key)
    if known is None:
        known = d.scratch[key] = _refusal(d, ns, ino)
    if isinstance(known, str):
        raise FdError(errno.EOPNOTSUPP, f"{where}: {known}")
    return ino, known


def _refusal(d, ns: int, ino: int) -> str | bool:
    """Why network namespace `ns` cannot be made again (a line), or whether its lo is up."""
    outside = kernel.ns_outsider("net", ino, set(d.scratch.get("pids") or ()) | {d.pid})
    if outside is not None:
        return (f"its network namespace holds process {outside}, which is outside the tree (the namespace is "
                "not the tree's own: restore makes a new one): not supported")
    pinned = _pinned(ino)
    if pinned is not None:
        return (f"its network namespace is bound at {pinned} (`ip netns add`, a runtime's netns file: others may "
                "enter it, and restore makes a new one): not supported")
    from engine import netlinks
    try:
        kept = netlinks.covered_of(ns)
    except netlinks.NetlinkError as e:
        return e.strerror
    return differs(forkrun.run(_state_of, ns), fresh_pair(), covered=kept)


def _without_lo_v6(st: dict) -> dict:
    """`state` without lo's own IPv6 addresses, routes and multicast groups."""
    return {**st, **{k: [e for e in st[k] if not (_loopback(e) and ":" in e)] for k in ("addrs", "routes")},
            # ("DEV GROUP USERS": an IPv6 group is 32 hex digits, /proc/net/igmp6's)
            "mcast": [e for e in st["mcast"] if not (e.split()[0] == "lo" and len(e.split()[1]) == 32)]}


def _loopback(entry: str) -> bool:
    """An address or route of lo's own (127/8, ::1, and the link-local and multicast routes the
    kernel gives lo with them)."""
    words = entry.split()
    if "lo" not in (words[0], words[-1]):
        return False
    dst = words[-3] if words[-2] == "dev" else words[1]
    return dst.startswith(("127.", "::1/", "fe80::", "ff00::", "ff02::"))


def differs(have: dict, fresh: tuple[dict, dict], loopback_follows: bool = False, covered: dict | None = None) -> str | bool:
    """Why a namespace in `have` (`state`) is not one `fresh` (`fresh_state`'s pair) becomes by bringing
    its lo up or not (a line), or whether its lo is up. `loopback_follows`: a namespace without an
    inet socket, whose sysctls restore writes (engine/netvars.py): lo's own addresses and routes
    follow from them and lo's state (ipv6's disable_ipv6, addr_gen_mode add or drop ::1 even with lo
    down), and multicast memberships are only the kernel's, so those are not compared. `covered`: what
    the image keeps of the namespace (engine/netlinks.py `covered_of`: its devices, with their
    addresses and routes), passed over."""
    if covered:
        have = {**have, **{k: [e for e in have[k] if e not in set(covered.get(k, ()))]
                           for k in ("addrs", "routes", "mcast")},
                "links": {n: on for n, on in have["links"].items() if n not in set(covered.get("links", ()))}}
    if loopback_follows:
        have = {**have, **{k: [e for e in have[k] if not _loopback(e)] for k in ("addrs", "routes")}, "mcast": []}
        fresh = tuple({**f, **{k: [e for e in f[k] if not _loopback(e)] for k in ("addrs", "routes")}, "mcast": []}
                      for f in fresh)
    elif have.get("lo_v6_off"):
        # lo's IPv6 turned off (its disable_ipv6, which restore writes before any socket): the ::1 and
        # the IPv6 routes and groups a fresh lo has go with it
        have, fresh = _without_lo_v6(have), tuple(_without_lo_v6(f) for f in fresh)
    extra = sorted(set(have["links"]) - set(fresh[0]["links"]))
    if extra:
        return (f"its network namespace has interface {', '.join(extra)}, which a restored one (lo only) would lack: "
                "not supported")
    up = sorted(n for n, on in have["links"].items() if on and n != "lo")
    if up:
        return (f"its network namespace has interface {', '.join(up)} up, which a restored one would have down: "
                "not supported")
    lo_up = have["links"].get("lo", False)
    want = fresh[1 if lo_up else 0]["addrs"]
    if have["addrs"] != want:
        odd = sorted(set(have["addrs"]) ^ set(want))
        return (f"its network namespace's addresses differ from those a restored one gets ({'; '.join(odd)[:200]}): "
                "not supported")
    want = fresh[1 if lo_up else 0]["mcast"]
    if have["mcast"] != want:
        odd = sorted(set(have["mcast"]) ^ set(want))
        return (f"its network namespace's multicast memberships (a socket's IP_ADD_MEMBERSHIP, not kept) differ from "
                f"a restored one's ({'; '.join(odd)[:200]}): not supported")
    want = fresh[1 if lo_up else 0]["routes"]
    if have["routes"] != want:
        odd = sorted(set(have["routes"]) ^ set(want))
        return (f"its network namespace's routes differ from those a restored one gets ({'; '.join(odd)[:200]}): "
                "not supported")
    return lo_up


def _pinned(ino: int) -> str | None:
    """Where the dumper's mount namespace binds network namespace `ino` (an nsfs mount), or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[3] == f"net:[{ino}]":
                return fields[4]
    return None
