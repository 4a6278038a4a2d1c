"""rtnetlink from Python: the message headers (nlmsghdr, ifinfomsg, ifaddrmsg, rtmsg, tcmsg, rtgenmsg) and
attributes packed and unpacked with struct, a dump request and a request the kernel acknowledges.
Each call opens its own NETLINK_ROUTE socket in the caller's network namespace (a child joins the
namespace first: engine/netlinks.py). The layouts are the kernel's uapi (linux/netlink.h,
linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/net_namespace.h).
"""

from __future__ import annotations

import socket
import struct

__all__ = ["attr", "attrs", "dump", "request", "IFINFO", "IFADDR", "RTMSG", "TCMSG"]

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 1, 4, 0x200, 0x400, 0x300
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_GETQDISC = 38
RTM_GETNSID = 90
# ifinfomsg attributes (IFLA_*) and those nested in IFLA_LINKINFO (IFLA_INFO_*)
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_QDISC, IFLA_MASTER = 1, 3, 4, 5, 6, 10
IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 18, 26, 28, 37
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BR_STP_STATE, IFLA_BR_VLAN_FILTERING = 5, 7
# ifaddrmsg attributes
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_CACHEINFO, IFA_FLAGS, IFA_PROTO = 1, 2, 4, 6, 8, 11
# rtmsg attributes
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_METRICS = 1, 2, 3, 4, 5, 6, 7, 8
RTA_MULTIPATH, RTA_TABLE, RTA_VIA, RTA_PREF, RTA_ENCAP, RTA_EXPIRES, RTA_NH_ID = 9, 15, 18, 20, 22, 23, 30
NETNSA_NSID, NETNSA_FD = 1, 3

IFINFO = struct.Struct("=BxHiII")      # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")       # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")    # family, dst_len, src_len, tos, table, protocol, scope, type, flags
TCMSG = struct.Struct("=BxxxiIII")     # family, ifindex, handle, parent, info
_HDR = struct.Struct("=IHHII")         # length, type, flags, seq, port


def attr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def attrs(data: bytes, off: int = 0) -> dict[int, bytes]:
    """The attributes of `data` from `off` on: {type: payload} (the nested/byte-order bits cleared)."""
    out = {}
    while off + 4 <= len(data):
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[off + 4: off + alen]
        off += (alen + 3) & ~3
    return out


def text(payload: bytes | None) -> str | None:
    """A NUL-ended string attribute, or None."""
    return None if payload is None else payload.split(b"\0")[0].decode(errors="replace")


def u32(payload: bytes | None) -> int | None:
    """A 32-bit attribute, or None."""
    return None if payload is None or len(payload) < 4 else struct.unpack_from("=I", payload)[0]


def _talk(typ: int, flags: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as s:
        s.send(_HDR.pack(_HDR.size + len(body), typ, flags, 1, 0) + body)
        out = []
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + _HDR.size <= len(data):
                ln, mtype, _f, _seq, _port = _HDR.unpack_from(data, off)
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        raise OSError(err, f"{what}: {_strerror(err)}")
                    return out   # (the acknowledgement)
                out.append((mtype, data[off + _HDR.size: off + ln]))
                if not flags & NLM_F_DUMP and not flags & NLM_F_ACK:
                    return out
                off += (ln + 3) & ~3


def _strerror(err: int) -> str:
    import os
    return os.strerror(err)


def dump(typ: int, body: bytes) -> list[tuple[int, bytes]]:
    """[(message type, payload)] of a dump request `typ` with `body`."""
    return _talk(typ, NLM_F_REQUEST | NLM_F_DUMP, body, "rtnetlink dump")


def request(typ: int, body: bytes, what: str, flags: int = 0) -> None:
    """Send request `typ` and wait for the kernel's acknowledgement; an error raises OSError naming `what`."""
    _talk(typ, NLM_F_REQUEST | NLM_F_ACK | flags, body, what)


def get(typ: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
    """The kernel's answer to a (non-dump) get request `typ`."""
    return _talk(typ, NLM_F_REQUEST, body, what)


def nsid_of(fd: int) -> int:
    """The id our network namespace gives network namespace `fd` (RTM_GETNSID), -1 when none."""
    got = get(RTM_GETNSID, struct.pack("=Bxxx", socket.AF_UNSPEC) + attr(NETNSA_FD, struct.pack("=I", fd)),
              "network namespace id")
    for _t, msg in got:
        nsid = attrs(msg, 4).get(NETNSA_NSID)
        if nsid is not None:
            return struct.unpack("=i", nsid[:4])[0]
    return -1
