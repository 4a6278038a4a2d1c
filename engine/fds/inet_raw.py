"""IP packets restore (and dump, for datagrams it gives back) sends into a network namespace of the
tree through a raw socket, with a source of its choosing: a UDP datagram from its sender's address
and port (engine/fds/inet_udp.py), an echo reply to a ping socket (engine/fds/inet_ping.py), a
TCP segment a connection's peer would have sent (a FIN, an acknowledgment: engine/fds/inet_tcp.py).
Sent by a child of ours that joins the namespace (one of the tree's, never the dumper's: the
callers' sockets are the tree's), on its lo alone, each to an address of the namespace: since the
namespace may have devices (engine/netlinks.py), one a veth whose peer is outside the tree, an
image's socket bound elsewhere (IP_FREEBIND) must not have restore send from loopback out of it."""

from __future__ import annotations

import os
import socket
import struct

IPV6_HDRINCL = 36
TCP_FIN, TCP_RST, TCP_ACK = 0x01, 0x04, 0x10


def _sum(b: bytes) -> int:
    """The Internet checksum of `b`."""
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def received(s: socket.socket):
    """Yield (data, address) of each datagram waiting on `s`, oldest first, until none is left; an
    error the socket held (ECONNREFUSED...) comes back before them and is passed over."""
    while True:
        try:
            yield s.recvfrom(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            continue


SO_RCVBUFFORCE = 33
_INT_MAX = (1 << 31) - 1


def widen(s: socket.socket, rcvbuf: int, packets: list) -> None:
    """Force the receive buffer of `s` wide enough for `packets` (`packet`'s) on top of `rcvbuf`
    (the image's size, which its caller sets again afterwards); at most what setsockopt takes (an
    int: the kernel halves a forced size past INT_MAX / 2 anyway)."""
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, min(rcvbuf + sum(len(p) + 1024 for _f, _d, p in packets), _INT_MAX))


def loopback(host: str) -> bool:
    """Whether `host` is a loopback address (an IPv4 one mapped into IPv6 too; a scope suffix
    "%lo" ignored): the only senders a restored namespace's packets may claim."""
    import ipaddress
    a = ipaddress.ip_address(host.split("%")[0])
    return (a.ipv4_mapped if a.version == 6 and a.ipv4_mapped else a).is_loopback


def packet(src: str, dst: str, proto: int, payload: bytes) -> tuple[int, str, bytes]:
    """(family, dst, an IP packet from `src` to `dst` carrying `payload` of protocol `proto`, whose
    checksum field (UDP, TCP, ICMP, ICMPv6) is filled in here)."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    a, b = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    at = {17: 6, 6: 16, 1: 2, 58: 2}[proto]   # (where the checksum sits in the UDP, TCP, ICMP, ICMPv6 header)
    payload = payload[:at] + b"\0\0" + payload[at + 2:]
    # (ICMP's sums its message alone; the others' a pseudo-header too)
    csum = _sum(payload if proto == 1 else a + b + struct.pack("!I3xB", len(payload), proto) + payload)
    if proto == 17:
        csum = csum or 0xFFFF
    payload = payload[:at] + struct.pack("!H", csum) + payload[at + 2:]
    if fam == socket.AF_INET:   # (the kernel fills in the IP header's checksum)
        return fam, dst, struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0, a, b) + payload
    return fam, dst, struct.pack("!IHBB16s16s", 6 << 28, len(payload), proto, 64, a, b) + payload


def udp(src: str, sport: int, dst: str, dport: int, data: bytes) -> tuple[int, str, bytes]:
    """A UDP datagram's packet (`packet`)."""
    return packet(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def tcp(src: tuple, dst: tuple, seq: int, ack: int, flags: int, window: int) -> tuple[int, str, bytes]:
    """A TCP segment without data or options from `src` to `dst` ((address, port) each)."""
    hdr = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                      min(window, 0xFFFF), 0, 0)
    return packet(src[0], dst[0], 6, hdr)


_LO_MTU = 65536


def _fragments(pkt: bytes) -> list[bytes]:
    """IPv6 packet `pkt` as fragments that each fit lo's MTU (a datagram an IPv6 UDP socket sent
    longer than that was fragmented by its sender; a raw socket sends what it is given, EMSGSIZE):
    its payload cut at multiples of 8 bytes, each part behind a copy of its header (next header:
    Fragment) and a fragment header (offset, more fragments, one identification); reassembled on
    receipt."""
    if len(pkt) <= _LO_MTU:
        return [pkt]
    head, body, proto = pkt[:40], pkt[40:], pkt[6]
    step = (_LO_MTU - 40 - 8) & ~7
    ident = struct.unpack("!I", os.urandom(4))[0]
    out = []
    for off in range(0, len(body), step):
        part = body[off:off + step]
        more = 1 if off + step < len(body) else 0
        frag = struct.pack("!BBHI", proto, 0, off | more, ident)   # (off is a multiple of 8: its low bits free)
        out.append(head[:4] + struct.pack("!HB", 8 + len(part), 44) + head[7:] + frag + part)
    return out


def _local(fam: int, dst: str) -> None:
    """Refuse `dst` unless it is an address of our namespace (a bind to it works without IP_FREEBIND)."""
    import errno
    with socket.socket(fam, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((dst, 0))
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL:
                raise
            raise OSError(errno.EADDRNOTAVAIL, f"{dst} is not an address of its network namespace (a socket bound "
                                               "there with IP_FREEBIND receives nothing restore may send)") from None


def _send_in(netns: int, packets: list) -> None:
    from engine import kernel
    kernel.setns(netns, kernel.CLONE_NEWNET)
    for fam, dst, pkt in packets:
        _local(fam, dst)
        with socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW) as r:
            # (on lo alone: a packet restore makes never leaves the namespace through a device, one
            # whose peer is outside it, an external veth's, on the host's bridge)
            r.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
            if fam == socket.AF_INET6:
                r.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
            for part in _fragments(pkt) if fam == socket.AF_INET6 else [pkt]:
                r.sendto(part, (dst, 0))


def send(s: socket.socket, packets: list) -> None:
    """Send `packets` (`packet`'s) in the network namespace of socket `s`, in order."""
    from engine import forkrun
    from engine.fds import inet_net
    ns = inet_net.netns_fd(s.fileno())
    try:
        forkrun.run(_send_in, ns, packets)
    finally:
        os.close(ns)
