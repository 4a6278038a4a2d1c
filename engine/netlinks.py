"""The network devices of the tree's network namespaces, with their addresses and routes, as the image
keeps them (manifest "netdevs": {net-N: NETDEVS}); engine/netlinks_make.py makes them again.

Read by rtnetlink (engine/rtnl.py) in a child joined to each namespace:
- links of kind veth, dummy, bridge and tun (IFLA_LINKINFO's kind; a tun or tap device's own
  record: engine/tundev.py): name, ifindex, MTU, MAC address, up, master (a bridge of the same
  namespace); a veth's peer (IFLA_LINK, IFLA_LINK_NETNSID) is a
  link of the same or another namespace of the tree (found by RTM_GETNSID on each), or outside the
  tree: then it must be declared `--external veth[NAME]:KEY` at dump, and restore makes the outer
  end where the user says (`veth[KEY]:OUTER[@BRIDGE]`). lo and the fallback tunnel devices a fresh
  namespace has are not links of the record (lo's state: engine/netdevs.py); any other kind
  (macvlan, ipvlan, vxlan...), a queueing discipline other than the default are refused. A bridge's
  settings and its ports' ("bridge", "port": engine/netbridge.py, which refuses what it does not
  make), and whether a link has the kernel's IPv6 multicast route ("mroute6").
- addresses (IPv4, IPv6) with prefix, scope, broadcast and the flags that matter, in the kernel's
  order (an IPv4 primary before its secondaries). lo's 127.0.0.1/8 and ::1 are left out (lo makes
  them when it comes up). An IPv6 link-local address the kernel made is kept exactly, like a user's:
  restore adds it (NODAD) before the link is up, so it is in use at once as it was (the kernel's
  own, made again from the kept MAC address, would be tentative for a second, refusing a restored
  socket's bind, and a stable-privacy or random one would differ); the kernel's attempt at its own
  then finds it there (with addr_gen_mode stable_privacy or random, it adds a second one). An
  address with a finite lifetime, one from a router advertisement or a point-to-point peer is refused.
- routes of every table the kernel did not make (protocol other than kernel; not cloned): its
  prefix, prefix routes and local-table entries come back with the addresses and links up.
  Multipath, encapsulated, source-routed, nexthop-object and expiring routes are refused.
Not kept: neighbour entries (learnt again), policy routing rules (per-device sysctls of the kept
devices: engine/netvars.py). An IPv6 address tentative at dump keeps the flag: restore lets it go
through DAD again.
"""

from __future__ import annotations

import errno
from engine import rx
import socket
import struct

from engine import forkrun, kernel, rtnl, tundev

__all__ = ["NetlinkError", "covered_of", "read", "check", "KINDS"]

KINDS = ("bridge", "dummy", "tun", "veth")
MAX_LINKS, MAX_ADDRS, MAX_ROUTES = 64, 256, 1024
IFF_UP = 1
IFA_F_KEPT = 0x2 | 0x10 | 0x40 | 0x100 | 0x200   # NODAD, HOMEADDRESS, TENTATIVE, MANAGETEMPADDR, NOPREFIXROUTE
RTN_MULTICAST = 5
RTM_F_CLONED, RTNH_F_ONLINK, RTPROT_KERNEL = 0x200, 4, 2
ROUTE_TYPES = (1, 2, 6, 7, 8)   # unicast, local, blackhole, unreachable, prohibit
# (the kernel's dev_valid_name: no '/', ':' or space, not "." or ".."; nor "all" or "default", the
# names of /proc/sys/net/*/conf's own entries, which it refuses too)
_NAME = rx.compile(r"^(?!(?:\.|\.\.|all|default)\Z)[A-Za-z0-9_.@+-]{1,15}\Z")
_MAC = rx.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}\Z")
_KEY = rx.compile(r"^[A-Za-z0-9_.:+-]{1,64}\Z")


class NetlinkError(OSError):
    """A network device, address or route the image does not keep; the message is one line."""


def _name_of(msg: bytes) -> str:
    return rtnl.text(rtnl.attrs(msg, rtnl.IFINFO.size).get(rtnl.IFLA_IFNAME)) or "?"


def _links(fresh: set[str], tree_fds: list[int]) -> tuple[list[dict], dict[int, str]]:
    """Our namespace's links: ([link record, with "peer_at" (tree index or -1, ifindex) for a veth], {ifindex: name})."""
    got = rtnl.dump(rtnl.RTM_GETLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
    names = {rtnl.IFINFO.unpack_from(m)[2]: _name_of(m) for _t, m in got}
    nsids: dict[int, int] | None = None
    out = []
    for _t, msg in got:
        _fam, _typ, index, flags, _ch = rtnl.IFINFO.unpack_from(msg)
        a = rtnl.attrs(msg, rtnl.IFINFO.size)
        name = names[index]
        info = rtnl.attrs(a.get(rtnl.IFLA_LINKINFO, b""))
        kind = rtnl.text(info.get(rtnl.IFLA_INFO_KIND))
        if name == "lo" or name in fresh:
            continue
        if kind not in KINDS:
            raise NetlinkError(errno.EOPNOTSUPP, f"interface {name} is of kind {kind or 'unknown'}, which restore "
                                                 f"does not make (only {', '.join(KINDS)}): not supported")
        qdisc = rtnl.text(a.get(rtnl.IFLA_QDISC))
        if qdisc not in (None, "", "noqueue", "noop") and (kind != "tun" or index in _users_qdiscs()):
            raise NetlinkError(errno.EOPNOTSUPP, f"interface {name} has queueing discipline {qdisc}, which restore "
                                                 "does not make: not supported")
        link = {"name": name, "kind": kind, "index": index, "mtu": rtnl.u32(a.get(rtnl.IFLA_MTU)) or 1500,
                "up": bool(flags & IFF_UP)}
        mac = a.get(rtnl.IFLA_ADDRESS)
        if mac and len(mac) == 6:
            link["mac"] = ":".join(f"{b:02x}" for b in mac)
        master = rtnl.u32(a.get(rtnl.IFLA_MASTER))
        if master:
            link["master"] = names.get(master, "?")
        _bridge_options(link, info)
        if kind == "tun":
            try:
                link["tun"] = tundev.info_of(rtnl.attrs(info.get(rtnl.IFLA_INFO_DATA, b"")), name,
                                             bool((a.get(tundev.IFLA_CARRIER) or b"\0")[0]))
            except ValueError as e:
                raise NetlinkError(errno.EOPNOTSUPP, str(e)) from None
            link["tun"]["ifflags"] = flags & tundev.IFFLAGS   # (slirp4netns turns multicast off)
        if kind == "veth":
            nsid = a.get(rtnl.IFLA_LINK_NETNSID)
            where = None   # (no netns id: the peer is in this namespace)
            if nsid is not None:
                if nsids is None:
                    nsids = {rtnl.nsid_of(fd): i for i, fd in enumerate(tree_fds)}
                    nsids.pop(-1, None)
                where = nsids.get(struct.unpack("=i", nsid[:4])[0], -1)
            link["peer_at"] = (where, rtnl.u32(a.get(rtnl.IFLA_LINK)) or 0)
        out.append(link)
    return out, names


def _bridge_options(link: dict, info: dict[int, bytes]) -> None:
    """Put a bridge's settings and a bridge port's on `link` ("bridge", "port": engine/netbridge.py),
    those that differ from a fresh one's; NetlinkError for what restore does not make."""
    from engine import netbridge
    try:
        if link["kind"] == "bridge":
            data = rtnl.attrs(info.get(rtnl.IFLA_INFO_DATA, b""))
            kept = netbridge.kept_of("bridge", data, netbridge.fresh()["bridge"], f"bridge {link['name']}")
            link.update({"bridge": kept} if kept else {})
            have = netbridge.values(netbridge.BR, data)
            if have.get("vlan_filtering"):
                link["_pvid"] = have.get("vlan_default_pvid", 1)   # (its VLAN entries: checked in _read_in)
        if rtnl.text(info.get(netbridge.IFLA_INFO_SLAVE_KIND)) == "bridge":
            data = rtnl.attrs(info.get(netbridge.IFLA_INFO_SLAVE_DATA, b""))
            kept = netbridge.kept_of("port", data, netbridge.fresh()["port"], f"bridge port {link['name']}")
            link.update({"port": kept} if kept else {})
    except ValueError as e:
        raise NetlinkError(errno.EOPNOTSUPP, str(e)) from None


def _users_qdiscs() -> set[int]:
    """The ifindexes of our namespace's devices that have a queueing discipline the kernel did not
    attach itself. The kernel's own (a device's default root when it comes up, net.core.default_qdisc
    or mq over several queues, and mq's per-queue children) have handle 0; one added with tc gets
    another (its own, or 8001: on). (A restored tun device gets the kernel's default again; the
    sysctl itself cannot tell: it is shown in the initial network namespace only.)"""
    out = set()
    for _t, msg in rtnl.dump(rtnl.RTM_GETQDISC, rtnl.TCMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        _fam, index, handle, _parent, _info = rtnl.TCMSG.unpack_from(msg)
        if handle:
            out.add(index)
    return out


def _addrs(names: dict[int, str], kept: set[str]) -> list[dict]:
    """Our namespace's addresses on kept links and lo, but those the kernel makes itself."""
    out = []
    for _t, msg in rtnl.dump(rtnl.RTM_GETADDR, rtnl.IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        fam, prefix, flags8, scope, index = rtnl.IFADDR.unpack_from(msg)
        a = rtnl.attrs(msg, rtnl.IFADDR.size)
        dev = names.get(index, "?")
        if fam not in (socket.AF_INET, socket.AF_INET6) or (dev != "lo" and dev not in kept):
            continue
        local = a.get(rtnl.IFA_LOCAL) or a.get(rtnl.IFA_ADDRESS) or b""
        addr = socket.inet_ntop(fam, local)
        proto = (a.get(rtnl.IFA_PROTO) or b"\0")[0]
        if proto == 1 or (dev == "lo" and f"{addr}/{prefix}" in ("127.0.0.1/8", "::1/128")):
            continue   # (lo's own: made again when lo comes up)
        what = f"address {addr}/{prefix} of {dev}"
        if proto == 2:
            raise NetlinkError(errno.EOPNOTSUPP, f"{what} comes from a router advertisement: not supported")
        cache = a.get(rtnl.IFA_CACHEINFO)
        if cache and struct.unpack_from("=II", cache)[1] != 0xFFFFFFFF:
            raise NetlinkError(errno.EOPNOTSUPP, f"{what} has a finite lifetime, which restore does not keep: "
                                                 "not supported")
        peer = a.get(rtnl.IFA_ADDRESS)
        if fam == socket.AF_INET and peer and peer != local:
            raise NetlinkError(errno.EOPNOTSUPP, f"{what} has a point-to-point peer: not supported")
        flags = rtnl.u32(a.get(rtnl.IFA_FLAGS)) or flags8
        rec = {"dev": dev, "addr": addr, "prefix": prefix, "scope": scope, "flags": flags & IFA_F_KEPT}
        if rtnl.IFA_BROADCAST in a:
            rec["broadcast"] = socket.inet_ntop(fam, a[rtnl.IFA_BROADCAST])
        out.append(rec)
    return out


_REFUSED_RTA = {rtnl.RTA_MULTIPATH: "multipath", rtnl.RTA_ENCAP: "encapsulated", rtnl.RTA_NH_ID: "nexthop-object",
                rtnl.RTA_VIA: "via another family", rtnl.RTA_IIF: "input-interface", rtnl.RTA_SRC: "source-routed",
                rtnl.RTA_EXPIRES: "expiring"}


def _route(fam: int, msg: bytes, names: dict[int, str]) -> dict | None:
    """One route's record; None for one the kernel made itself."""
    _f, dst_len, src_len, tos, table, proto, scope, rtype, flags = rtnl.RTMSG.unpack_from(msg)
    a = rtnl.attrs(msg, rtnl.RTMSG.size)
    if proto == RTPROT_KERNEL or flags & RTM_F_CLONED:
        return None
    table = rtnl.u32(a.get(rtnl.RTA_TABLE)) or table
    dst = socket.inet_ntop(fam, a[rtnl.RTA_DST]) if rtnl.RTA_DST in a else None
    what = f"route {dst or 'default'}/{dst_len} (table {table})"
    refused = [why for t, why in _REFUSED_RTA.items() if t in a] + (["source-routed"] if src_len else [])
    if rtype not in ROUTE_TYPES:
        refused.append(f"type {rtype}")
    if refused:
        raise NetlinkError(errno.EOPNOTSUPP, f"{what} is {refused[0]}, which restore does not make: not supported")
    rec = {"family": 4 if fam == socket.AF_INET else 6, "dst_len": dst_len, "table": table, "protocol": proto,
           "scope": scope, "type": rtype, "tos": tos, "flags": flags & RTNH_F_ONLINK}
    if dst is not None:
        rec["dst"] = dst
    oif = rtnl.u32(a.get(rtnl.RTA_OIF))
    if oif:
        rec["dev"] = names.get(oif, "?")
    for key, t in (("gateway", rtnl.RTA_GATEWAY), ("prefsrc", rtnl.RTA_PREFSRC)):
        if t in a:
            rec[key] = socket.inet_ntop(fam, a[t])
    if rtnl.RTA_PRIORITY in a:
        rec["priority"] = rtnl.u32(a[rtnl.RTA_PRIORITY])
    metrics = rtnl.attrs(a.get(rtnl.RTA_METRICS, b""))
    if metrics:
        if 16 in metrics:   # (RTAX_CC_ALGO: a string)
            raise NetlinkError(errno.EOPNOTSUPP, f"{what} names a congestion control: not supported")
        rec["metrics"] = sorted([t, rtnl.u32(v)] for t, v in metrics.items())
    return rec


def _mroutes6(names: dict[int, str]) -> set[str]:
    """The links with the IPv6 multicast route the kernel adds when it sets IPv6 up on a link with
    carrier (ff00::/8, table local): one without carrier when it is made again (a bridge with no
    port) lacks it, and restore adds it then."""
    out = set()
    for _t, msg in rtnl.dump(rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(socket.AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0)):
        _f, dst_len, _s, _tos, _table, proto, _scope, rtype, _flags = rtnl.RTMSG.unpack_from(msg)
        a = rtnl.attrs(msg, rtnl.RTMSG.size)
        if rtype == RTN_MULTICAST and proto == RTPROT_KERNEL and dst_len == 8 and a.get(rtnl.RTA_DST, b"")[:1] == b"\xff":
            out.add(names.get(rtnl.u32(a.get(rtnl.RTA_OIF)) or 0, "?"))
    return out


def _routes(names: dict[int, str]) -> list[dict]:
    out = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for _t, msg in rtnl.dump(rtnl.RTM_GETROUTE, rtnl.RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0)):
            rec = _route(fam, msg, names)
            if rec is not None:
                out.append(rec)
    return out


_KERNEL_GROUPS = ("E0000001", "010000E0", "ff020000000000000000000000000001", "ff010000000000000000000000000001",
                  "ff020000000000000000000000000002", "ff0200000000000000000001ff")
# (a bridge with multicast snooping on joins the multicast router discovery groups, 224.0.0.106 and
# ff02::6a, when it comes up: a restored one joins them the same way)
_BRIDGE_GROUPS = ("6A0000E0", "ff02000000000000000000000000006a")


def _covered(links: list[dict], addrs: list[dict], routes: list[dict]) -> dict:
    """What inet_net.state shows of these (and of what the kernel makes from them), in its spelling,
    for inet_net.differs to pass over: the kept links, every address and route on them, the kept
    addresses and routes of lo or of none, the all-nodes groups the kernel joins on them."""
    import ipaddress
    from engine.fds import inet_net
    kept = {lk["name"] for lk in links}
    bridges = {lk["name"] for lk in links if lk["kind"] == "bridge"}
    have = inet_net.state()
    mine = {f"{a['dev']} {a['addr']}/{a['prefix']}" for a in addrs}
    on_lo = [ipaddress.ip_network(f"{a['addr']}/{a['prefix']}", strict=False) for a in addrs if a["dev"] == "lo"]
    return {"links": sorted(kept),
            "addrs": sorted(e for e in have["addrs"] if e.split()[0] in kept or e in mine),
            "routes": sorted(e for e in have["routes"] if e.split()[-1] in kept or _route_line(e, routes)
                             or _lo_route(e, on_lo)),
            "mcast": sorted(e for e in have["mcast"] if e.split()[0] in kept
                            and (e.split()[1].startswith(_KERNEL_GROUPS) or e.split()[0] in bridges
                                 and e.split()[1] in _BRIDGE_GROUPS))}


def _lo_route(line: str, nets: list) -> bool:
    """Whether inet_net.state's `line` is a route on lo into one of the networks `nets` of lo's kept
    addresses (the kernel's local, broadcast and prefix routes of them)."""
    import ipaddress
    words = line.split()
    if not nets or words[-1] != "lo" or words[4] == "default/0":
        return False
    try:
        dst = ipaddress.ip_address(words[4].split("/")[0])
    except ValueError:
        return False
    return any(dst.version == n.version and dst in n for n in nets)


def _route_line(line: str, routes: list[dict]) -> bool:
    """Whether inet_net.state's `line` is one of the kept `routes` (on lo or no device)."""
    for r in routes:
        dst = r.get("dst") or "default"
        if line == f"table {r['table']} type {r['type']} {dst}/{r['dst_len']} dev {r.get('dev') or 0}":
            return True
    return False


def _read_in(fd: int, fresh: set[str], tree_fds: list[int]) -> dict:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    links, names = _links(fresh, tree_fds)
    from engine import netbridge
    why = netbridge.vlans_refused(names, {lk["name"]: lk.pop("_pvid") for lk in links if "_pvid" in lk})
    if why:
        raise NetlinkError(errno.EOPNOTSUPP, why)
    kept = {lk["name"] for lk in links}
    addrs = _addrs(names, kept)
    routes = _routes(names)
    mroutes = _mroutes6(names)
    for lk in links:
        if lk["name"] in mroutes:
            lk["mroute6"] = True
    # (what the validator would refuse at restore is refused here: a dump that succeeds must restore)
    odd = [lk["name"] for lk in links if not _NAME.match(lk["name"])]
    odd += [r["dev"] for r in routes if r.get("dev", "lo") not in kept | {"lo"}]
    if odd:
        raise NetlinkError(errno.EOPNOTSUPP, f"interface {odd[0]!r} (its name, or a route on it when restore does not "
                                             "make it): not supported")
    if len(links) > MAX_LINKS or len(addrs) > MAX_ADDRS or len(routes) > MAX_ROUTES:
        raise NetlinkError(errno.E2BIG, f"more than {MAX_LINKS} devices, {MAX_ADDRS} addresses or {MAX_ROUTES} "
                                        "routes: not supported")
    return {"links": links, "addrs": addrs, "routes": routes, "covered": _covered(links, addrs, routes)}


def _fresh_links() -> set[str]:
    from engine.fds import inet_net
    return set(inet_net.fresh_pair()[0]["links"])


def covered_of(fd: int) -> dict:
    """What network namespace `fd` holds that the image keeps (`_covered`); NetlinkError for what it does not."""
    return forkrun.run(_read_in, fd, _fresh_links(), [])["covered"]


def read(fds: dict[str, int], ext: dict[str, str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({ns id: NETDEVS}, {ns id: covered}) of the network namespaces `fds` (ids -> fds: the tree's
    own, never the dumper's); a veth whose peer is outside them is recorded by the key `ext` gives
    its name (--external veth[NAME]:KEY). NetlinkError (one line, naming the namespace) for what the
    image does not keep."""
    ids, order = sorted(fds), [fds[i] for i in sorted(fds)]
    fresh = _fresh_links()
    got = {}
    for nsid in ids:
        try:
            got[nsid] = forkrun.run(_read_in, fds[nsid], fresh, order)
        except NetlinkError as e:
            raise NetlinkError(e.errno, f"network namespace {nsid}: {e.strerror}") from None
    used = set()
    for nsid in ids:
        names = {lk["index"]: lk["name"] for lk in got[nsid]["links"]}
        for lk in got[nsid]["links"]:
            if lk.get("master") is not None and lk["master"] not in names.values():
                raise NetlinkError(errno.EOPNOTSUPP, f"network namespace {nsid}: interface {lk['name']} has master "
                                                     f"{lk['master']}, which is no bridge restore makes: not supported")
            if "peer_at" not in lk:
                continue
            where, index = lk.pop("peer_at")
            peer_ns = nsid if where is None else ids[where] if where >= 0 else None
            peer = next((p["name"] for p in got[peer_ns]["links"] if p["index"] == index), None) if peer_ns else None
            if peer is not None:
                lk["peer"] = {"ns": peer_ns, "name": peer}
            elif lk["name"] in ext and lk["name"] not in used:
                lk["peer"] = {"external": ext[lk["name"]]}
                used.add(lk["name"])
            elif lk["name"] in ext:   # (one key, one outer end: restore could not make two of one name)
                raise NetlinkError(errno.EOPNOTSUPP, f"network namespace {nsid}: --external veth[{lk['name']}] names "
                                                     "veths of two namespaces of the tree: not supported")
            else:
                raise NetlinkError(errno.EOPNOTSUPP, f"network namespace {nsid}: interface {lk['name']} is a veth whose "
                                   "peer is outside the tree: declare it with --external veth[" + lk["name"] + "]:KEY "
                                   "at dump (and veth[KEY]:OUTER[@BRIDGE] at restore)")
    unknown = sorted(set(ext) - used)
    if unknown:
        raise NetlinkError(errno.EINVAL, f"--external veth[{unknown[0]}]: no veth of that name in the tree's network "
                                         "namespaces has its peer outside the tree")
    return ({n: {k: got[n][k] for k in ("links", "addrs", "routes")} for n in ids if got[n]["links"] or got[n]["addrs"]
             or got[n]["routes"]}, {n: got[n]["covered"] for n in ids})


def _ip(value, family: int | None) -> bool:
    """Whether `value` is an address text of `family` (4, 6, or either)."""
    import ipaddress
    try:
        return type(value) is str and ipaddress.ip_address(value).version in ((4, 6) if family is None else (family,))
    except ValueError:
        return False


def _int(value, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def _check_link(lk, nsid: str, made: set[str], doc_netdevs: dict, fail) -> None:
    what = f"netdevs {nsid}"
    if type(lk) is not dict or set(lk) - {"name", "kind", "index", "mtu", "mac", "up", "master", "peer", "tun", "bridge",
                                          "port", "mroute6"}:
        fail(f"{what}: a link must be an object of name, kind, index, mtu, mac, up, master, peer, tun, bridge, port, "
             "mroute6")
    if type(lk.get("name")) is not str or not _NAME.match(lk["name"]) or lk["name"] == "lo":
        fail(f"{what}: link name {str(lk.get('name'))[:40]!r}: 1 to 15 letters, digits or _.@+- (no '/' or ':'), not lo, "
             "., .., all or default (the kernel's rule)")
    what += f" link {lk['name']}"
    if lk.get("kind") not in KINDS or not _int(lk.get("index"), 1, 2**31 - 1) or not _int(lk.get("mtu"), 1, 65535) \
            or type(lk.get("up")) is not bool or ("mac" in lk and (type(lk["mac"]) is not str or not _MAC.match(lk["mac"]))):
        fail(f"{what}: kind one of {', '.join(KINDS)}, index and mtu in range, up true or false, mac aa:bb:cc:dd:ee:ff")
    if (lk["kind"] == "tun") != ("tun" in lk):
        fail(f"{what}: a tun link, and only a tun link, has a tun record")
    if "tun" in lk:
        tundev.check(lk["tun"], what, fail)
    _check_bridge(lk, what, fail)
    peer = lk.get("peer")
    if (lk["kind"] == "veth") != (peer is not None):
        fail(f"{what}: a veth, and only a veth, has a peer")
    if peer is not None:
        if type(peer) is not dict or not (set(peer) == {"external"} and type(peer["external"]) is str
                                          and _KEY.match(peer["external"]) or set(peer) == {"ns", "name"}):
            fail(f"{what}: its peer is {{ns, name}} of the image or {{external: KEY}}")
        if "ns" in peer:
            back = [p for p in (doc_netdevs.get(peer["ns"]) or {}).get("links") or ()
                    if type(p) is dict and p.get("name") == peer["name"] and p.get("kind") == "veth"]
            if peer["ns"] not in made or len(back) != 1 or back[0].get("peer") != {"ns": nsid, "name": lk["name"]}:
                fail(f"{what}: its peer must be a veth of a network namespace restore makes, naming it back")


def _check_bridge(lk: dict, what: str, fail) -> None:
    """A link's bridge settings (a bridge's only), port settings (a link with a master only), and
    mroute6 (true or false)."""
    from engine import netbridge
    if "bridge" in lk:
        if lk["kind"] != "bridge":
            fail(f"{what}: only a bridge has bridge settings")
        netbridge.check("bridge", lk["bridge"], what, fail)
    if "port" in lk:
        if "master" not in lk:
            fail(f"{what}: only a link with a master has port settings")
        netbridge.check("port", lk["port"], what, fail)
    if type(lk.get("mroute6", False)) is not bool:
        fail(f"{what}: mroute6 is true or false")


def _check_addr(a, nsid: str, devs: set[str], fail) -> None:
    what = f"netdevs {nsid}: address"
    if type(a) is not dict or set(a) - {"dev", "addr", "prefix", "scope", "flags", "broadcast"}:
        fail(f"{what}: must be an object of dev, addr, prefix, scope, flags, broadcast")
    if a.get("dev") not in devs or not _ip(a.get("addr"), None):
        fail(f"{what} {str(a.get('addr'))[:50]!r}: an address on a link of the namespace")
    fam = 6 if ":" in a["addr"] else 4
    if not _int(a.get("prefix"), 0, 32 if fam == 4 else 128) or not _int(a.get("scope"), 0, 255) \
            or not _int(a.get("flags"), 0, IFA_F_KEPT) or a["flags"] & ~IFA_F_KEPT \
            or ("broadcast" in a and not _ip(a["broadcast"], 4)):
        fail(f"{what} {a['addr']}: prefix, scope, flags (NODAD, HOMEADDRESS, TENTATIVE, MANAGETEMPADDR, NOPREFIXROUTE) "
             "or broadcast out of range")


def _check_route(r, nsid: str, devs: set[str], fail) -> None:
    what = f"netdevs {nsid}: route"
    keys = {"family", "dst", "dst_len", "table", "protocol", "scope", "type", "tos", "flags", "dev", "gateway",
            "prefsrc", "priority", "metrics"}
    if type(r) is not dict or set(r) - keys or r.get("family") not in (4, 6):
        fail(f"{what}: must be an object of {', '.join(sorted(keys))}, family 4 or 6")
    fam = r["family"]
    ok = (_int(r.get("dst_len"), 0, 32 if fam == 4 else 128) and _int(r.get("table"), 1, 2**32 - 1)
          and all(_int(r.get(k), 0, 255) for k in ("protocol", "scope", "tos")) and r.get("type") in ROUTE_TYPES
          and _int(r.get("flags"), 0, RTNH_F_ONLINK) and r["flags"] in (0, RTNH_F_ONLINK)
          and ("dev" not in r or r["dev"] in devs) and all(k not in r or _ip(r[k], fam) for k in ("dst", "gateway", "prefsrc"))
          and ("priority" not in r or _int(r["priority"], 0, 2**32 - 1)))
    metrics = r.get("metrics", [])
    ok = ok and type(metrics) is list and len(metrics) <= 15 and all(
        type(m) is list and len(m) == 2 and _int(m[0], 1, 15) and _int(m[1], 0, 2**32 - 1) for m in metrics)
    if not ok:
        fail(f"{what} {str(r.get('dst', 'default'))[:50]}/{r.get('dst_len')}: a field out of range")


def check(netdevs, made: set[str], fail) -> None:
    """The validator's rule for manifest "netdevs": only namespaces restore makes (`made`), bounded
    counts, link names of at most 15 bytes without '/', unique in their namespace, a veth's peer named
    only inside the image (naming it back) or by an external key (each key once), addresses and
    routes well-formed and on links of their namespace (or lo)."""
    if type(netdevs) is not dict:
        fail("netdevs: must be an object {net ns: devices}")
    keys: list[str] = []
    for nsid, rec in netdevs.items():
        if nsid not in made:
            fail(f"netdevs for {str(nsid)[:40]!r}: not a network namespace restore makes")
        if type(rec) is not dict or set(rec) - {"links", "addrs", "routes"} or any(
                type(rec.get(k, [])) is not list for k in ("links", "addrs", "routes")):
            fail(f"netdevs {nsid}: must be an object of the lists links, addrs, routes")
        links, addrs, routes = rec.get("links", []), rec.get("addrs", []), rec.get("routes", [])
        if len(links) > MAX_LINKS or len(addrs) > MAX_ADDRS or len(routes) > MAX_ROUTES:
            fail(f"netdevs {nsid}: at most {MAX_LINKS} links, {MAX_ADDRS} addresses, {MAX_ROUTES} routes")
        for lk in links:
            _check_link(lk, nsid, made, netdevs, fail)
        names = [lk["name"] for lk in links]
        if len(set(names)) != len(names) or len({lk["index"] for lk in links}) != len(links):
            fail(f"netdevs {nsid}: two links of one name or index")
        bridges = {lk["name"] for lk in links if lk["kind"] == "bridge"}
        if any("master" in lk and (lk["master"] not in bridges or lk["kind"] == "bridge") for lk in links):
            fail(f"netdevs {nsid}: a link's master must be a bridge of the namespace")
        keys += [lk["peer"]["external"] for lk in links if "external" in (lk.get("peer") or {})]
        devs = set(names) | {"lo"}
        for a in addrs:
            _check_addr(a, nsid, devs, fail)
        for r in routes:
            _check_route(r, nsid, devs, fail)
    if len(set(keys)) != len(keys):
        fail("netdevs: an external veth key is used twice")
