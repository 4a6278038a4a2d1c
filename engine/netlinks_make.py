"""Restore's side of engine/netlinks.py: the image's links, addresses and routes made again in the
network namespaces restore made, each from a child joined to its namespace (never the restorer's own
nor the host's: refused here as the validator refuses it), before the namespace's sysctls and the
sockets.

Per namespace: the links (bridges first, with their ifindex, MAC address and MTU; a veth pair of the
tree is made once, from the end whose (namespace, name) sorts first, its peer put straight into the
other namespace with IFLA_NET_NS_FD); then in each namespace the masters, addresses (IPv6 ones with
NODAD: they were in use already, and a tentative one would refuse the restored sockets' binds; the
link-local one too, before the link is up: the kernel's own attempt at it finds it there),
links up, and the routes, in rounds until none is left (a route through a gateway needs the route to
it first).

A veth whose peer was outside the tree (`--external veth[NAME]:KEY` at dump) is made with its outer
end in the restorer's network namespace, named as the user says at restore (`--external
veth[KEY]:OUTER[@BRIDGE]`), attached to BRIDGE when given and brought up: nothing in the image names
a device of the restorer's namespace. The pair goes when the restored namespace goes (a failed
restore leaves no outer end behind).

A tun or tap device is made by /dev/net/tun (engine/tundev.py), persistent until its fds are attached.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from engine import forkrun, kernel, netbridge, rtnl, tundev
from engine.netlinks import NetlinkError, _NAME

__all__ = ["make", "outer_of"]

IFF_UP = 1
IFA_F_NODAD, IFA_F_TENTATIVE = 2, 0x40
NLM_F_REPLACE = 0x100
_CREATE = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL


def outer_of(spec: str) -> tuple[str, str | None]:
    """(OUTER, BRIDGE or None) of a restore --external veth[KEY]:OUTER[@BRIDGE]; ValueError when malformed."""
    outer, _, bridge = spec.partition("@")
    if not _NAME.match(outer) or (bridge and not _NAME.match(bridge)):
        raise ValueError(f"--external veth[...]:{spec}: OUTER[@BRIDGE], interface names of 1 to 15 letters, "
                         "digits or _.@+-, not ., .., all or default")
    return outer, bridge or None


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _ifinfo(index: int, name: str, mtu: int | None, mac: str | None) -> bytes:
    body = rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0) + rtnl.attr(rtnl.IFLA_IFNAME, name.encode() + b"\0")
    if mtu:
        body += rtnl.attr(rtnl.IFLA_MTU, struct.pack("=I", mtu))
    if mac:
        body += rtnl.attr(rtnl.IFLA_ADDRESS, _mac(mac))
    return body


def _new_link(lk: dict, data: bytes, index: int, what: str) -> None:
    """RTM_NEWLINK of `lk` at ifindex `index` (0: any), `data` its IFLA_INFO_DATA; errors name `what`."""
    info = rtnl.attr(rtnl.IFLA_INFO_KIND, lk["kind"].encode())
    if data:
        info += rtnl.attr(rtnl.IFLA_INFO_DATA, data)
    body = _ifinfo(index, lk["name"], lk["mtu"], lk.get("mac")) + rtnl.attr(rtnl.IFLA_LINKINFO, info)
    rtnl.request(rtnl.RTM_NEWLINK, body, what, _CREATE)


def _peer_data(index: int, peer: tuple) -> bytes:
    """IFLA_INFO_DATA of a veth whose peer `peer` ((index, name, mtu, mac), its namespace's fd) gets ifindex `index`."""
    (_index, name, mtu, mac), fd = peer
    return rtnl.attr(rtnl.VETH_INFO_PEER, _ifinfo(index, name, mtu, mac) + rtnl.attr(rtnl.IFLA_NET_NS_FD,
                                                                                      struct.pack("=I", fd)))


def _make_link(lk: dict, peer: tuple | None) -> None:
    """Make `lk` here; `peer`: ((index, name, mtu, mac), the fd of its namespace) of a veth's other end."""
    what = f"interface {lk['name']}" + (f" (a veth, its peer {peer[0][1]})" if peer else "")
    data = netbridge.data_of("bridge", lk.get("bridge") or {}) if lk["kind"] == "bridge" else b""
    try:
        _new_link(lk, _peer_data(peer[0][0], peer) if peer else data, lk["index"], what)
    except OSError as e:
        # (an ifindex taken in either namespace: any other then; taken here by a device a fresh
        # namespace of this host has and the dumper's had not, a tunnel's fallback device, it is
        # EEXIST: with NLM_F_EXCL the kernel does not take it for that device's; a name taken
        # fails again below)
        if e.errno not in (errno.EBUSY, errno.EEXIST):
            raise
        _new_link(lk, _peer_data(0, peer) if peer else data, 0, what)


def _set_port(lk: dict) -> None:
    """Give bridge port `lk` its kept settings (RTM_NEWLINK on the link: IFLA_INFO_SLAVE_DATA)."""
    info = rtnl.attr(netbridge.IFLA_INFO_SLAVE_KIND, b"bridge\0")
    info += rtnl.attr(netbridge.IFLA_INFO_SLAVE_DATA, netbridge.data_of("port", lk["port"]))
    body = rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, socket.if_nametoindex(lk["name"]), 0, 0)
    rtnl.request(rtnl.RTM_NEWLINK, body + rtnl.attr(rtnl.IFLA_LINKINFO, info), f"bridge port {lk['name']}")


def _bridge_kept(rec: dict) -> None:
    """Check that the kernel kept the bridge and port settings of `rec` given (an older kernel
    passes over an attribute it does not know): OSError naming the first it did not."""
    for lk in rec.get("links", ()):
        for which, table, i in (("bridge", netbridge.BR, 0), ("port", netbridge.PORT, 1)):
            if not lk.get(which):
                continue
            have = netbridge.values(table, netbridge.info_data(lk["name"])[i])
            odd = sorted(k for k, v in lk[which].items() if have.get(k) != v)
            if odd:
                raise OSError(errno.EOPNOTSUPP, f"{'bridge' if i == 0 else 'bridge port'} {lk['name']}: this kernel "
                              f"did not keep its setting {odd[0]} = {lk[which][odd[0]]} (it has {have.get(odd[0])})")


def _make_tun(lk: dict) -> None:
    """A tun or tap device (rtnetlink cannot make one: engine/tundev.py), then its MTU and MAC address."""
    tundev.make(lk)
    body = _ifinfo(socket.if_nametoindex(lk["name"]), lk["name"], lk["mtu"], lk.get("mac"))
    rtnl.request(rtnl.RTM_SETLINK, body, f"interface {lk['name']}")
    if "ifflags" in lk["tun"]:
        _set_link(lk["name"], lk["tun"]["ifflags"], tundev.IFFLAGS)


def _links_in(fd: int, todo: list[tuple[dict, tuple | None]]) -> None:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    for lk, peer in todo:
        if lk["kind"] == "tun":
            _make_tun(lk)
        else:
            _make_link(lk, peer)


def _set_link(name: str, flags: int = 0, change: int = 0, master: str | None = None) -> None:
    body = rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, socket.if_nametoindex(name), flags, change)
    if master is not None:
        body += rtnl.attr(rtnl.IFLA_MASTER, struct.pack("=I", socket.if_nametoindex(master)))
    rtnl.request(rtnl.RTM_SETLINK, body, f"interface {name}")


def _addr_body(a: dict, fam: int, flags: int) -> bytes:
    raw = socket.inet_pton(fam, a["addr"])
    body = rtnl.IFADDR.pack(fam, a["prefix"], flags & 0xFF, a["scope"], socket.if_nametoindex(a["dev"]))
    body += rtnl.attr(rtnl.IFA_LOCAL, raw) + rtnl.attr(rtnl.IFA_ADDRESS, raw) + rtnl.attr(rtnl.IFA_FLAGS, struct.pack("=I", flags))
    if "broadcast" in a:
        body += rtnl.attr(rtnl.IFA_BROADCAST, socket.inet_pton(fam, a["broadcast"]))
    return body


def _add_addr(a: dict) -> None:
    """Add address `a`. An IPv6 one that was in use (not tentative) is added with NODAD, so it is in
    use at once, then given its own flags again (a change of flags starts no DAD: `ip addr` shows
    it as it was); one that was tentative is added without: the kernel runs its DAD again."""
    fam = socket.AF_INET6 if ":" in a["addr"] else socket.AF_INET
    what = f"address {a['addr']}/{a['prefix']} of {a['dev']}"
    flags = a["flags"] & ~IFA_F_TENTATIVE
    if fam == socket.AF_INET6 and not a["flags"] & IFA_F_TENTATIVE:
        flags |= IFA_F_NODAD
    rtnl.request(rtnl.RTM_NEWADDR, _addr_body(a, fam, flags), what, _CREATE)
    if flags != a["flags"] & ~IFA_F_TENTATIVE:
        rtnl.request(rtnl.RTM_NEWADDR, _addr_body(a, fam, a["flags"]), what, NLM_F_REPLACE)


def _add_route(r: dict) -> None:
    fam = socket.AF_INET if r["family"] == 4 else socket.AF_INET6
    table = r["table"]
    body = rtnl.RTMSG.pack(fam, r["dst_len"], 0, r["tos"], table if table < 256 else 0, r["protocol"], r["scope"],
                           r["type"], r["flags"]) + rtnl.attr(rtnl.RTA_TABLE, struct.pack("=I", table))
    for key, t in (("dst", rtnl.RTA_DST), ("gateway", rtnl.RTA_GATEWAY), ("prefsrc", rtnl.RTA_PREFSRC)):
        if key in r:
            body += rtnl.attr(t, socket.inet_pton(fam, r[key]))
    if "dev" in r:
        body += rtnl.attr(rtnl.RTA_OIF, struct.pack("=I", socket.if_nametoindex(r["dev"])))
    if "priority" in r:
        body += rtnl.attr(rtnl.RTA_PRIORITY, struct.pack("=I", r["priority"]))
    if r.get("metrics"):
        body += rtnl.attr(rtnl.RTA_METRICS, b"".join(rtnl.attr(t, struct.pack("=I", v)) for t, v in r["metrics"]))
    rtnl.request(rtnl.RTM_NEWROUTE, body, f"route {r.get('dst', 'default')}/{r['dst_len']} (table {table})", _CREATE)


def _gen_mode(name: str, mode: int) -> None:
    """Set link `name`'s IPv6 address generation mode by rtnetlink (unlike the sysctl, it makes no
    address)."""
    inet6 = rtnl.attr(socket.AF_INET6, rtnl.attr(rtnl.IFLA_INET6_ADDR_GEN_MODE, bytes([mode])))
    body = rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, socket.if_nametoindex(name), 0, 0)
    rtnl.request(rtnl.RTM_SETLINK, body + rtnl.attr(rtnl.IFLA_AF_SPEC, inet6), f"interface {name}")


def _no_link_local(rec: dict) -> dict[str, int]:
    """The links of `rec` coming up with a link-local address kept: their address generation mode
    set to none until they have carrier ({name: the mode to put back}). The kernel would make one
    of its own from the link's MAC address at carrier, which need not be the kept one's (a bridge's
    MAC address is its first port's since, not the one it had when it came up)."""
    out = {}
    for lk in rec.get("links", ()):
        if lk["up"] and any(a["dev"] == lk["name"] and a["addr"].startswith("fe80:") for a in rec.get("addrs", ())):
            try:
                with open(f"/proc/sys/net/ipv6/conf/{lk['name']}/addr_gen_mode") as f:
                    mode = int(f.read())
                _gen_mode(lk["name"], rtnl.IN6_ADDR_GEN_MODE_NONE)
            except (OSError, ValueError):
                continue   # (IPv6 off on it)
            out[lk["name"]] = mode
    return out


def _config_in(fd: int, rec: dict) -> dict[str, int]:
    """In a child joined to the namespace: masters, addresses, links up, routes (in rounds); returns
    the address generation modes to put back once the links have carrier (`_no_link_local`)."""
    kernel.setns(fd, kernel.CLONE_NEWNET)
    for lk in rec.get("links", ()):
        if "master" in lk:
            _set_link(lk["name"], master=lk["master"])
        if lk.get("port"):
            _set_port(lk)
    _bridge_kept(rec)
    for a in rec.get("addrs", ()):
        _add_addr(a)
    modes = _no_link_local(rec)
    for lk in rec.get("links", ()):
        if lk["up"]:
            _set_link(lk["name"], IFF_UP, IFF_UP)
    left = list(rec.get("routes", ()))
    while left:
        failed = []
        for r in left:
            try:
                _add_route(r)
            except OSError as e:
                failed.append((r, e))
        if len(failed) == len(left):
            raise failed[0][1]
        left = [r for r, _ in failed]
    return modes


IFF_RUNNING = 0x40
_RTN_MULTICAST = 5
_IFLA_OPERSTATE, _IF_OPER_UP = 16, 6


def _await_carrier(names: list[str], seconds: float, dummies=frozenset()) -> None:
    """Wait (at most `seconds`) until links `names` have carrier: the kernel tells a veth's carrier
    late (its link watch runs up to a second after both ends are up), and the restored tree must see
    its links as they were, not NO-CARRIER for a moment."""
    import time
    deadline = time.monotonic() + seconds
    while names and time.monotonic() < deadline:
        got = rtnl.dump(rtnl.RTM_GETLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        # carrier, and the operational state the link watch sets after it (UNKNOWN until then)
        running = {socket.if_indextoname(rtnl.IFINFO.unpack_from(m)[2]): rtnl.attrs(m, rtnl.IFINFO.size).get(
                       _IFLA_OPERSTATE, b"")[:1] == bytes([_IF_OPER_UP])
                   for _t, m in got if rtnl.IFINFO.unpack_from(m)[3] & IFF_RUNNING}
        # (a dummy's operational state stays UNKNOWN: carrier is all it shows)
        names = [n for n in names if not running.get(n, False) and not (n in running and n in dummies)]
        if names:
            time.sleep(0.02)


def _carrier_in(fd: int, names: list[str], modes: dict[str, int], dummies=frozenset(), mroutes=()) -> None:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    _await_carrier(names, 3.0, dummies)
    for name, mode in modes.items():
        _gen_mode(name, mode)
    _add_mroutes6(mroutes)


def _add_mroutes6(names) -> None:
    """Add the kernel's IPv6 multicast route (ff00::/8, table local) to the links `names` that lack
    it: the kernel adds it when it sets IPv6 up on a link with carrier, which a link made again
    without carrier (a bridge with no port, its MAC address given) has not."""
    if not names:
        return
    have = set()
    for _t, msg in rtnl.dump(rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(socket.AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0)):
        _f, dst_len, _s, _tos, _table, _proto, _scope, rtype, _flags = rtnl.RTMSG.unpack_from(msg)
        a = rtnl.attrs(msg, rtnl.RTMSG.size)
        if rtype == _RTN_MULTICAST and dst_len == 8 and a.get(rtnl.RTA_DST, b"")[:1] == b"\xff":
            have.add(rtnl.u32(a.get(rtnl.RTA_OIF)))
    for name in names:
        if socket.if_nametoindex(name) in have:
            continue
        try:
            _add_route({"family": 6, "dst": "ff00::", "dst_len": 8, "table": 255, "protocol": 2, "scope": 0,
                        "type": _RTN_MULTICAST, "tos": 0, "flags": 0, "dev": name, "priority": 256})
        except FileExistsError:
            pass   # (the link got carrier meanwhile: the kernel added it)


def _todo(nsid: str, rec: dict, netdevs: dict, fds: dict[str, int], outer: dict[str, str], own: int) -> list:
    """The links namespace `nsid` makes: [(link, peer or None)], bridges first."""
    out = []
    for lk in sorted(rec.get("links", ()), key=lambda x: x["kind"] != "bridge"):
        peer = lk.get("peer")
        if peer is None:
            out.append((lk, None))
        elif "external" in peer:
            name, _bridge = outer_of(outer["veth:" + peer["external"]])
            out.append((lk, ((0, name, lk["mtu"], None), own)))
        elif (nsid, lk["name"]) < (peer["ns"], peer["name"]):
            other = next(p for p in netdevs[peer["ns"]]["links"] if p["name"] == peer["name"])
            out.append((lk, ((other["index"], other["name"], other["mtu"], other.get("mac")), fds[peer["ns"]])))
    return out


def _carried(rec: dict, netdevs: dict) -> list[str]:
    """The links of `rec` that get carrier: up veths whose peer is up (or outside the tree: brought
    up), up dummies, up bridges with such a port."""
    out = []
    for lk in rec.get("links", ()):
        peer = lk.get("peer") or {}
        if not lk["up"] or lk["kind"] in ("bridge", "tun"):   # (a tun's carrier: once an fd is attached)
            continue
        if lk["kind"] == "dummy" or "external" in peer or any(p["name"] == peer["name"] and p["up"]
                                                              for p in netdevs[peer["ns"]]["links"]):
            out.append(lk["name"])
    ports = {lk.get("master") for lk in rec.get("links", ()) if lk["name"] in out}
    return out + [lk["name"] for lk in rec.get("links", ()) if lk["kind"] == "bridge" and lk["up"] and lk["name"] in ports]


def make(fds: dict[str, int], netdevs: dict, outer: dict[str, str]) -> None:
    """Make `netdevs` (manifest "netdevs") in the namespaces `fds` ({ns id: fd}, those restore made);
    `outer`: {"veth:KEY": "OUTER[@BRIDGE]"} the user gave. NetlinkError naming the namespace."""
    own_ino = os.stat("/proc/self/ns/net").st_ino
    for nsid in netdevs:
        if nsid not in fds or os.fstat(fds[nsid]).st_ino == own_ino:
            raise NetlinkError(errno.EINVAL, f"network namespace {nsid}: not one this restore made")
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    step = "its devices"
    try:
        for nsid in sorted(netdevs):
            step = "its devices"
            forkrun.run(_links_in, fds[nsid], _todo(nsid, netdevs[nsid], netdevs, fds, outer, own))
        modes = {}
        for nsid in sorted(netdevs):
            step = "its addresses and routes"
            # (an IFF_TUN device's mode stays none: the kernel, in mode eui64 or random, would add a
            # random link-local address of its own once an fd is attached)
            modes[nsid] = {n: m for n, m in forkrun.run(_config_in, fds[nsid], netdevs[nsid]).items()
                           if not any(lk["name"] == n and lk.get("tun", {}).get("type") == "tun"
                                      for lk in netdevs[nsid].get("links", ()))}
        nsid = "of the restorer"
        for key in sorted({lk["peer"]["external"] for rec in netdevs.values() for lk in rec.get("links", ())
                           if "external" in (lk.get("peer") or {})}):
            name, bridge = outer_of(outer["veth:" + key])
            step = f"outer end {name} of veth {key}"
            if bridge is not None:
                _set_link(name, master=bridge)
            _set_link(name, IFF_UP, IFF_UP)
        for nsid in sorted(netdevs):
            step = "its links' carrier"
            links = netdevs[nsid].get("links", ())
            forkrun.run(_carrier_in, fds[nsid], _carried(netdevs[nsid], netdevs), modes[nsid],
                        {lk["name"] for lk in links if lk["kind"] == "dummy"},
                        sorted(lk["name"] for lk in links if lk.get("mroute6") and lk["up"]))
    except OSError as e:
        raise NetlinkError(e.errno or errno.EIO, f"network namespace {nsid}: {step}: {e.strerror or e}") from None
    finally:
        os.close(own)
