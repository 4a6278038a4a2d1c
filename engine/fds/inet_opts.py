"""Socket options of an inet socket that a program sets and that change what it does or what its
peers see: address and port reuse (SO_REUSEADDR, SO_REUSEPORT: a second listener on the port),
IPV6_V6ONLY, keepalive and its timers, TCP_NODELAY, TCP_DEFER_ACCEPT, the buffer sizes and their locks, timeouts,
SO_BROADCAST, IP_FREEBIND, IP_BIND_ADDRESS_NO_PORT, TOS/TTL, the device it is bound to (SO_BINDTODEVICE)...

Dump reads them on its copy of the socket; restore sets, before the bind (reuse, v6only and
freebind decide whether the bind works), those that differ from the new socket's. A value that does
not come back fails the restore naming the option.
"""

from __future__ import annotations

import errno
import socket
import struct

from engine.fds import FdError

SOL_SOCKET, IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP = socket.SOL_SOCKET, 0, 41, 6, 17
SOL_RAW, IPPROTO_ICMPV6, IPPROTO_UDPLITE = 255, 58, 136
_DGRAM = ("udp", "udplite", "ping", "raw")
# name: (level, option number, "int" or a struct of _STRUCTS, families or None: every one, protocols or None)
OPTS = {
    "reuseaddr": (SOL_SOCKET, 2, "int", None, None), "reuseport": (SOL_SOCKET, 15, "int", None, None),
    "keepalive": (SOL_SOCKET, 9, "int", None, None), "broadcast": (SOL_SOCKET, 6, "int", None, None),
    "oobinline": (SOL_SOCKET, 10, "int", None, None), "priority": (SOL_SOCKET, 12, "int", None, None),
    "rcvbuf": (SOL_SOCKET, 8, "int", None, None), "sndbuf": (SOL_SOCKET, 7, "int", None, None),
    "rcvlowat": (SOL_SOCKET, 18, "int", None, None), "timestamp": (SOL_SOCKET, 29, "int", None, None),
    "rcvtimeo": (SOL_SOCKET, 20, "timeval", None, None), "sndtimeo": (SOL_SOCKET, 21, "timeval", None, None),
    "linger": (SOL_SOCKET, 13, "linger", None, None), "mark": (SOL_SOCKET, 36, "int", None, None),
    # (SO_BINDTOIFINDEX: a device of the tree's namespace, made again at its ifindex: engine/netlinks.py)
    "bindtoifindex": (SOL_SOCKET, 62, "int", None, None),
    "tos": (IPPROTO_IP, 1, "int", ("inet",), None), "ttl": (IPPROTO_IP, 2, "int", ("inet",), None),
    "freebind": (IPPROTO_IP, 15, "int", None, None), "bind_address_no_port": (IPPROTO_IP, 24, "int", None, None),
    "transparent": (IPPROTO_IP, 19, "int", None, None),
    "pktinfo": (IPPROTO_IP, 8, "int", ("inet",), None), "recverr": (IPPROTO_IP, 11, "int", ("inet",), None),
    "v6only": (IPPROTO_IPV6, 26, "int", ("inet6",), None), "tclass": (IPPROTO_IPV6, 67, "int", ("inet6",), None),
    "unicast_hops": (IPPROTO_IPV6, 16, "int", ("inet6",), None),
    "recvpktinfo": (IPPROTO_IPV6, 49, "int", ("inet6",), None),
    "nodelay": (IPPROTO_TCP, 1, "int", None, ("tcp",)), "cork": (IPPROTO_TCP, 3, "int", None, ("tcp",)),
    "keepidle": (IPPROTO_TCP, 4, "int", None, ("tcp",)), "keepintvl": (IPPROTO_TCP, 5, "int", None, ("tcp",)),
    "keepcnt": (IPPROTO_TCP, 6, "int", None, ("tcp",)), "defer_accept": (IPPROTO_TCP, 9, "int", None, ("tcp",)),
    "user_timeout": (IPPROTO_TCP, 18, "int", None, ("tcp",)), "fastopen": (IPPROTO_TCP, 23, "int", None, ("tcp",)),
    # (how few unsent bytes make a connection writable again: TCP_NOTSENT_LOWAT, what HTTP/2 servers set)
    "notsent_lowat": (IPPROTO_TCP, 25, "int", None, ("tcp",)),
    "udp_cork": (IPPROTO_UDP, 1, "int", None, ("udp", "udplite")),
    "udp_segment": (IPPROTO_UDP, 103, "int", None, ("udp", "udplite")),
    # how much of each datagram UDP-Lite's checksum covers, sent and required received (0: all)
    "udplite_send_cscov": (IPPROTO_UDPLITE, 10, "int", None, ("udplite",)),
    "udplite_recv_cscov": (IPPROTO_UDPLITE, 11, "int", None, ("udplite",)),
    # a datagram socket's (ping's: TTL and errors it reports, path MTU discovery)
    "recvttl": (IPPROTO_IP, 12, "int", ("inet",), _DGRAM), "recvtos": (IPPROTO_IP, 13, "int", ("inet",), _DGRAM),
    "retopts": (IPPROTO_IP, 7, "int", ("inet",), _DGRAM), "recvopts": (IPPROTO_IP, 6, "int", ("inet",), _DGRAM),
    "mtu_discover": (IPPROTO_IP, 10, "int", ("inet",), _DGRAM),
    "recverr6": (IPPROTO_IPV6, 25, "int", ("inet6",), _DGRAM),
    "recvhoplimit": (IPPROTO_IPV6, 51, "int", ("inet6",), _DGRAM),
    "mtu_discover6": (IPPROTO_IPV6, 23, "int", ("inet6",), _DGRAM),
    # a raw socket's: whether the program writes the IP header; which ICMP types it does not receive
    # (a bit each, on an ICMP or ICMPv6 socket alone); where the kernel puts an IPv6 one's checksum
    "hdrincl": (IPPROTO_IP, 3, "int", ("inet",), ("raw",)), "hdrincl6": (IPPROTO_IPV6, 36, "int", ("inet6",), ("raw",)),
    "icmp_filter": (SOL_RAW, 1, "mask1", ("inet",), ("raw",)),
    "icmp6_filter": (IPPROTO_ICMPV6, 1, "mask8", ("inet6",), ("raw",)),
    "checksum6": (IPPROTO_IPV6, 7, "int", ("inet6",), ("raw",)),
    # whether its socket filter is locked (SO_LOCK_FILTER: set after the filter, engine/fds/inet_filter.py)
    "lock_filter": (SOL_SOCKET, 44, "int", None, None),
    # Found lost at C/R by session 32's hunt (restored with their defaults, the snapshot comparing
    # none): receive timestamps (chrony's, ptp4l's flags), multicast TTL/hops, loop and "all" (of a
    # datagram socket: a stream refuses them), the
    # destination address and traffic class reported with each datagram, don't-fragment, a minimum
    # TTL (GTSM), a socket's own local port range (Linux 6.3), a TCP socket's congestion control (a
    # name: one this kernel has loaded, `apply`), FIN_WAIT2 time, SYN retries, TCP_INQ's cmsg, thin
    # streams' linear timeouts, an added delay, a listener's saved SYNs.
    "timestampns": (SOL_SOCKET, 35, "int", None, None), "timestamping": (SOL_SOCKET, 37, "int", None, None),
    "multicast_ttl": (IPPROTO_IP, 33, "int", ("inet",), _DGRAM),
    "multicast_loop": (IPPROTO_IP, 34, "int", ("inet",), _DGRAM),
    "multicast_all": (IPPROTO_IP, 49, "int", ("inet",), _DGRAM),
    "recvorigdstaddr": (IPPROTO_IP, 20, "int", ("inet",), None), "minttl": (IPPROTO_IP, 21, "int", ("inet",), None),
    "local_port_range": (IPPROTO_IP, 51, "int", None, None),
    "multicast_hops": (IPPROTO_IPV6, 18, "int", ("inet6",), _DGRAM),
    "multicast_loop6": (IPPROTO_IPV6, 19, "int", ("inet6",), _DGRAM),
    "multicast_all6": (IPPROTO_IPV6, 29, "int", ("inet6",), _DGRAM),
    "recvtclass": (IPPROTO_IPV6, 66, "int", ("inet6",), None), "dontfrag": (IPPROTO_IPV6, 62, "int", ("inet6",), None),
    "recvorigdstaddr6": (IPPROTO_IPV6, 74, "int", ("inet6",), None),
    "autoflowlabel": (IPPROTO_IPV6, 70, "int", ("inet6",), None),
    "minhopcount": (IPPROTO_IPV6, 73, "int", ("inet6",), None),
    "congestion": (IPPROTO_TCP, 13, "name", None, ("tcp",)), "linger2": (IPPROTO_TCP, 8, "int", None, ("tcp",)),
    "syncnt": (IPPROTO_TCP, 7, "int", None, ("tcp",)), "inq": (IPPROTO_TCP, 36, "int", None, ("tcp",)),
    "thin_linear_timeouts": (IPPROTO_TCP, 16, "int", None, ("tcp",)),
    "tx_delay": (IPPROTO_TCP, 37, "int", None, ("tcp",)), "save_syn": (IPPROTO_TCP, 27, "int", None, ("tcp",)),
    # which buffer sizes are the program's (SO_BUF_LOCK, Linux 5.14: bits 1 send, 2 receive): set last,
    # since setting a size sets its bit too (a lock cleared after a size was set stays cleared)
    "buf_lock": (SOL_SOCKET, 72, "int", None, None),
    # A TCP listener's (or a socket's not connected yet): the segment size its connections announce
    # (TCP_MAXSEG reads back the program's while it listens, a connection's own mss_cache once
    # connected) and the receive window they advertise at most (TCP_WINDOW_CLAMP: a connection's is
    # TCP's, grown by autotuning). Read on such sockets alone (`unconnected`); lost before session 34.
    "maxseg": (IPPROTO_TCP, 2, "int", None, ("tcp",)), "window_clamp": (IPPROTO_TCP, 10, "int", None, ("tcp",)),
}
UNCONNECTED = ("maxseg", "window_clamp")
_FORCE = {"rcvbuf": 33, "sndbuf": 32}   # SO_RCVBUFFORCE, SO_SNDBUFFORCE
# [seconds, µs], [on, seconds], a filter's 32 or 256 bits as 32-bit words
_STRUCTS = {"timeval": struct.Struct("ll"), "linger": struct.Struct("ii"), "mask1": struct.Struct("I"),
            "mask8": struct.Struct("8I")}


def _get(s: socket.socket, name: str):
    level, num, how, _f, _p = OPTS[name]
    if how == "name":   # (a NUL-ended name of up to 15 bytes: TCP_CONGESTION's)
        return s.getsockopt(level, num, 16).split(b"\0")[0].decode("ascii", "replace")
    if how in _STRUCTS:
        return list(_STRUCTS[how].unpack(s.getsockopt(level, num, _STRUCTS[how].size)))
    return s.getsockopt(level, num)


def _applies(name: str, family: str, proto: str) -> bool:
    _l, _n, _h, fams, protos = OPTS[name]
    return (fams is None or family in fams) and (protos is None or proto in protos)


def read(s: socket.socket, family: str, proto: str, unconnected: bool = False) -> dict:
    """{name: value} of the options of OPTS that socket `s` (of `family`, `proto`) has; those of
    UNCONNECTED only when it is `unconnected` (a TCP listener, or one never connected)."""
    out = {}
    for name in OPTS:
        if _applies(name, family, proto) and (unconnected or name not in UNCONNECTED):
            try:
                out[name] = _get(s, name)
            except OSError:
                continue   # (one the kernel lacks)
    return out


def apply(s: socket.socket, opts: dict, force: bool = True) -> None:
    """Give socket `s` the options `opts` (read()'s) where they differ from its own. `force` False:
    a buffer size past [rw]mem_max is left at that limit, for a caller that may lack CAP_NET_ADMIN
    of the initial user namespace (SO_*BUFFORCE asks for it) and whose caller sets them again."""
    for name, want in sorted(opts.items(), key=lambda kv: (kv[0] == "buf_lock", kv[0])):
        if _get(s, name) == want:
            continue
        level, num, how, _f, _p = OPTS[name]
        try:
            if how == "name":
                _loaded(want)
                s.setsockopt(level, num, want.encode())
            elif how in _STRUCTS:
                s.setsockopt(level, num, _STRUCTS[how].pack(*want))
            elif name in _FORCE:
                # (the kernel doubles what it is given, and caps it at [rw]mem_max unless forced)
                s.setsockopt(level, num, want // 2)
                if _get(s, name) != want & ~1:
                    if not force:
                        continue
                    s.setsockopt(level, _FORCE[name], want // 2)
            else:
                s.setsockopt(level, num, want)
        except OSError as e:
            raise FdError(e.errno or errno.EINVAL, f"socket option {name} {want}: {e.strerror or e}") from None
        # (a connection's buffer that TCP's autotuning grew may be odd: the nearest one a program can set)
        if _get(s, name) != (want & ~1 if name in _FORCE else want):
            raise FdError(errno.EINVAL, f"socket option {name} came back as {_get(s, name)}, not {want}")


def _loaded(cc: str) -> None:
    """Refuse a TCP congestion control this kernel has not loaded (setting one would load its
    module, tcp_NAME, which an image must not choose)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            have = f.read().split()
    except OSError:
        return   # (no /proc/sys: the kernel refuses an unknown one as it can)
    if cc not in have:
        raise FdError(errno.ENOENT, f"TCP congestion control {cc!r} is not loaded on this kernel (it has "
                                    f"{' '.join(have)}): load its module (tcp_{cc}) and restore again")


def check(opts, family: str, proto: str, what: str) -> None:
    """The image validator's part: known names that apply to the socket, bounded ints (timeouts:
    [seconds, microseconds]; linger: [on, seconds]; an ICMP filter's words)."""
    from engine.image import _fail
    if not isinstance(opts, dict):
        _fail(f"{what}: socket options must be an object")
    for name, v in opts.items():
        if name not in OPTS or not _applies(name, family, proto):
            _fail(f"{what}: bad socket option {str(name)[:40]!r}")
        how = OPTS[name][2]
        ok = (how == "int" and type(v) is int and -(1 << 31) <= v < 1 << 31) or \
             (how == "name" and type(v) is str and 0 < len(v) < 16 and v.isascii()
              and all(c.isalnum() or c == "_" for c in v)) or \
             (how in _STRUCTS and type(v) is list and len(v) == len(_STRUCTS[how].unpack(bytes(_STRUCTS[how].size)))
              and all(type(x) is int and 0 <= x < 1 << 62 and (how[:4] != "mask" or x < 1 << 32) for x in v))
        if not ok:
            _fail(f"{what}: bad socket option {name!r}")
