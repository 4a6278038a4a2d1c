"""A bridge's own options and its ports' options, as the image keeps them (a link's "bridge" and
"port" records in manifest "netdevs", engine/netlinks.py), and how restore gives them back
(engine/netlinks_make.py).

Read by rtnetlink: a bridge's IFLA_INFO_DATA (IFLA_BR_*: STP on or off, forward delay, hello time,
max age, ageing time, priority, VLAN filtering and protocol, group forward mask and address, the
multicast snooping settings, the netfilter calls...), a port's IFLA_INFO_SLAVE_DATA (IFLA_BRPORT_*:
cost, priority, hairpin, guard, root block, learning, flooding, proxy ARP, isolation...). Only the
values that differ from those of a bridge or port this kernel makes afresh are kept (a fresh one
is made once, in a throwaway network namespace of a child, and read): restore gives them when it
makes the bridge (IFLA_INFO_DATA of RTM_NEWLINK) and once a port has its master (IFLA_INFO_SLAVE_DATA
of RTM_SETLINK), then reads them back and fails in one line when the kernel did not keep one (an
older kernel ignores an attribute it does not know).

Refused at dump (one line): a bridge with STP on in a topology change (for max age plus forward
delay after a port forwards: the kernel then shows twice the forward delay as its ageing time, not
its own); what is not a setting (the kernel's timers, STP's computed ids) is not
compared; a backup port or nexthop, and, with VLAN filtering on, VLAN entries other than the
kernel's default one (the default PVID, untagged, on the bridge and on each port) are refused.
A port's STP state follows from the bridge's settings: a restored port goes through them again.
"""

from __future__ import annotations

import socket
import struct

from engine import rtnl

__all__ = ["BR", "PORT", "kept_of", "data_of", "check", "fresh", "vlans_refused"]

# (name, struct format) of the settings: linux/if_link.h's IFLA_BR_* and IFLA_BRPORT_*; ">H" a
# big-endian 16-bit value (VLAN protocol); "6s" a MAC address; "8s" struct br_boolopt_multi
BR = {1: ("forward_delay", "=I"), 2: ("hello_time", "=I"), 3: ("max_age", "=I"), 4: ("ageing_time", "=I"),
      5: ("stp_state", "=I"), 6: ("priority", "=H"), 7: ("vlan_filtering", "=B"), 8: ("vlan_protocol", ">H"),
      9: ("group_fwd_mask", "=H"), 20: ("group_addr", "6s"), 22: ("mcast_router", "=B"),
      23: ("mcast_snooping", "=B"), 24: ("mcast_query_use_ifaddr", "=B"), 25: ("mcast_querier", "=B"),
      26: ("mcast_hash_elasticity", "=I"), 27: ("mcast_hash_max", "=I"), 28: ("mcast_last_member_cnt", "=I"),
      29: ("mcast_startup_query_cnt", "=I"), 30: ("mcast_last_member_intvl", "=Q"),
      31: ("mcast_membership_intvl", "=Q"), 32: ("mcast_querier_intvl", "=Q"), 33: ("mcast_query_intvl", "=Q"),
      34: ("mcast_query_response_intvl", "=Q"), 35: ("mcast_startup_query_intvl", "=Q"),
      36: ("nf_call_iptables", "=B"), 37: ("nf_call_ip6tables", "=B"), 38: ("nf_call_arptables", "=B"),
      39: ("vlan_default_pvid", "=H"), 41: ("vlan_stats_enabled", "=B"), 42: ("mcast_stats_enabled", "=B"),
      43: ("mcast_igmp_version", "=B"), 44: ("mcast_mld_version", "=B"), 45: ("vlan_stats_per_port", "=B"),
      46: ("multi_boolopt", "8s"), 49: ("fdb_max_learned", "=I")}
PORT = {2: ("priority", "=H"), 3: ("cost", "=I"), 4: ("hairpin", "=B"), 5: ("guard", "=B"), 6: ("root_block", "=B"),
        7: ("fast_leave", "=B"), 8: ("learning", "=B"), 9: ("unicast_flood", "=B"), 10: ("proxyarp", "=B"),
        12: ("proxyarp_wifi", "=B"), 25: ("mcast_router", "=B"), 27: ("mcast_flood", "=B"),
        28: ("mcast_to_ucast", "=B"), 29: ("vlan_tunnel", "=B"), 30: ("bcast_flood", "=B"),
        31: ("group_fwd_mask", "=H"), 32: ("neigh_suppress", "=B"), 33: ("isolated", "=B"),
        37: ("mcast_eht_hosts_limit", "=I"), 39: ("locked", "=B"), 40: ("mab", "=B"), 42: ("mcast_max_groups", "=I"),
        43: ("neigh_vlan_suppress", "=B")}
_BR_TOPOLOGY_CHANGE = 14
_PORT_REFUSED = {34: "a backup port", 44: "a backup nexthop"}
IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 4, 5
IFLA_EXT_MASK, RTEXT_FILTER_BRVLAN = 29, 2
IFLA_BRIDGE_VLAN_INFO = 2
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED, BRIDGE_VLAN_INFO_BRENTRY = 2, 4, 0x20
_BY_NAME = {which: {name: (t, fmt) for t, (name, fmt) in table.items()} for which, table in (("bridge", BR),
                                                                                              ("port", PORT))}


def _value(fmt: str, raw: bytes):
    """An attribute's value as the image keeps it: an int, or hex text of a byte string."""
    if fmt.endswith("s"):
        return raw[:struct.calcsize(fmt)].hex()
    return struct.unpack_from(fmt, raw.ljust(struct.calcsize(fmt), b"\0"))[0]


def values(table: dict, data: dict[int, bytes]) -> dict[str, object]:
    """{name: value} of the settings of `table` among attributes `data` ({type: payload})."""
    return {name: _value(fmt, data[t]) for t, (name, fmt) in table.items() if t in data}


def kept_of(which: str, data: dict[int, bytes], base: dict[str, object], what: str) -> dict[str, object]:
    """The settings of a bridge or port (`which`) whose values differ from a fresh one's (`base`);
    ValueError (one line naming `what`) for what restore does not make."""
    if which == "port":
        for t, why in _PORT_REFUSED.items():
            if rtnl.u32(data.get(t)):
                raise ValueError(f"{what} has {why}, which restore does not make: not supported")
    elif rtnl.u32(data.get(rtnl.IFLA_BR_STP_STATE)) and (data.get(_BR_TOPOLOGY_CHANGE) or b"\0")[0]:
        raise ValueError(f"{what} is in an STP topology change, which shows its ageing time as twice its forward "
                         "delay instead of its own: dump again once it is over (`ip -d link show`: topology_change 0)")
    have = values(BR if which == "bridge" else PORT, data)
    return {k: v for k, v in sorted(have.items()) if base.get(k) != v}


def data_of(which: str, kept: dict[str, object]) -> bytes:
    """The attributes (IFLA_INFO_DATA or IFLA_INFO_SLAVE_DATA) giving settings `kept`."""
    out = b""
    for name, value in sorted(kept.items(), key=lambda kv: _BY_NAME[which][kv[0]][0]):
        t, fmt = _BY_NAME[which][name]
        out += rtnl.attr(t, bytes.fromhex(value) if fmt.endswith("s") else struct.pack(fmt, value))
    return out


def check(which: str, kept, what: str, fail) -> None:
    """The validator's rule for a "bridge" or "port" record: known names, values in their range."""
    table = _BY_NAME[which]
    if type(kept) is not dict or len(kept) > len(table):
        fail(f"{what}: its {which} record must be an object of settings")
    for name, value in kept.items():
        if name not in table:
            fail(f"{what}: {which} setting {str(name)[:40]!r} is not one restore makes")
        fmt = table[name][1]
        if fmt.endswith("s"):
            n = struct.calcsize(fmt)
            ok = type(value) is str and len(value) == 2 * n and all(c in "0123456789abcdef" for c in value)
        else:
            ok = type(value) is int and 0 <= value < 1 << (8 * struct.calcsize(fmt))
        if not ok:
            fail(f"{what}: {which} setting {name}: out of range")


def _fresh_here() -> dict[str, dict[str, object]]:
    """In a child with a throwaway network namespace: a fresh bridge's settings and a fresh port's
    (a veth's end enslaved to it)."""
    info = rtnl.attr(rtnl.IFLA_INFO_KIND, b"bridge")
    rtnl.request(rtnl.RTM_NEWLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                 + rtnl.attr(rtnl.IFLA_IFNAME, b"br0\0") + rtnl.attr(rtnl.IFLA_LINKINFO, info), "a probe bridge",
                 rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)
    peer = rtnl.attr(rtnl.VETH_INFO_PEER, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                     + rtnl.attr(rtnl.IFLA_IFNAME, b"p1\0"))
    info = rtnl.attr(rtnl.IFLA_INFO_KIND, b"veth") + rtnl.attr(rtnl.IFLA_INFO_DATA, peer)
    rtnl.request(rtnl.RTM_NEWLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
                 + rtnl.attr(rtnl.IFLA_IFNAME, b"p0\0") + rtnl.attr(rtnl.IFLA_LINKINFO, info)
                 + rtnl.attr(rtnl.IFLA_MASTER, struct.pack("=I", socket.if_nametoindex("br0"))), "a probe port",
                 rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)
    return {"bridge": values(BR, info_data("br0")[0]), "port": values(PORT, info_data("p0")[1])}


def info_data(name: str) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """({IFLA_INFO_DATA attributes}, {IFLA_INFO_SLAVE_DATA attributes}) of link `name` of our namespace."""
    got = rtnl.get(rtnl.RTM_GETLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, socket.if_nametoindex(name), 0, 0),
                   f"interface {name}")
    a = rtnl.attrs(got[0][1], rtnl.IFINFO.size)
    info = rtnl.attrs(a.get(rtnl.IFLA_LINKINFO, b""))
    return rtnl.attrs(info.get(rtnl.IFLA_INFO_DATA, b"")), rtnl.attrs(info.get(IFLA_INFO_SLAVE_DATA, b""))


_fresh: dict | None = None


def fresh() -> dict[str, dict[str, object]]:
    """{"bridge": settings, "port": settings} of a fresh bridge and port of this kernel (read once
    per process, in a child that unshared a network namespace)."""
    global _fresh
    if _fresh is None:
        from engine import forkrun, kernel
        _fresh = forkrun.run(_fresh_here, unshare_flags=kernel.CLONE_NEWNET)
    return _fresh


def vlans_refused(names: dict[int, str], bridges: dict[str, int]) -> str | None:
    """Why a bridge of `bridges` ({name: its vlan_default_pvid}, those with VLAN filtering on)
    or one of its ports has VLAN entries restore would not make (other than the default PVID,
    untagged), or None; `names`: {ifindex: name} of our namespace."""
    if not bridges:
        return None
    body = struct.pack("=BxHiII", socket.AF_BRIDGE, 0, 0, 0, 0) + rtnl.attr(IFLA_EXT_MASK,
                                                                            struct.pack("=I", RTEXT_FILTER_BRVLAN))
    for _t, msg in rtnl.dump(rtnl.RTM_GETLINK, body):
        index = rtnl.IFINFO.unpack_from(msg)[2]
        a = rtnl.attrs(msg, rtnl.IFINFO.size)
        master = names.get(rtnl.u32(a.get(rtnl.IFLA_MASTER)) or index)
        if master not in bridges:
            continue
        spec = a.get(rtnl.IFLA_AF_SPEC, b"")
        entries, off = [], 0
        while off + 4 <= len(spec):
            alen, atype = struct.unpack_from("=HH", spec, off)
            if alen < 4:
                break
            if atype & 0x3FFF == IFLA_BRIDGE_VLAN_INFO:
                entries.append(struct.unpack_from("=HH", spec, off + 4))
            off += (alen + 3) & ~3
        want = BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED
        default = [(bridges[master], want)] if bridges[master] else []
        if [(vid, flags & ~BRIDGE_VLAN_INFO_BRENTRY) for flags, vid in entries] != default:
            return (f"interface {names.get(index, index)} has VLAN entries of bridge {master} other than the default "
                    f"one (VLAN {bridges[master]}, PVID, untagged: `bridge vlan show`), which restore does not make: "
                    "not supported")
    return None
