"""Datagrams waiting on a UDP socket of the tree's own network namespace: kept with their order,
boundaries (a zero-length one too) and senders' addresses and ports.

Dump (the tree stopped) receives them all and sends them back to the socket at once, as restore
does (a peek offset, SO_PEEK_OFF, walks the queue but skips a zero-length datagram a program
peeked at already; one the socket has already is refused). Their senders are addresses of that
namespace, which holds only lo's (engine/fds/inet_net.py): a sender off loopback (never sent back:
it could not be) or, to a connected socket, another than its peer (it would not take it again) is
refused.

Restore sends each again, once every process holds its fds, from a raw socket of the restored
namespace (made by a child of the restorer that joins it) with the sender's address and port as
its source: a sender's port a socket of the tree holds again is no obstacle, and the receiver sees
the same sender. Not kept: the destination address of a datagram to a socket bound to a wildcard
address (sent to 127.0.0.1 or ::1), ancillary data (IP_PKTINFO, timestamps), an error the socket
holds (ECONNREFUSED: dump's read takes it from a socket with datagrams waiting, a running tree too).
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import socket
import struct

from engine.imageformat import DICT, INT, LIST, STR, F, Record, b64, list_of, record, rng
from engine.fds import FdError

SO_PEEK_OFF, SO_RCVBUFFORCE = 42, 33
IPV6_HDRINCL = 36
MAX_DGRAMS = 4096
MAX_BYTES = 1 << 22   # of one socket's datagrams
DGRAM = Record("udp datagram", {
    "from": F(STR, rule=lambda v: None if len(v) <= 64 else "is too long"),   # the sender's address (loopback)
    "port": F(INT, rule=rng(1, 65535)),    # the sender's port
    "data": F(STR, rule=b64(65535)),
})
FIELD = F(LIST, required=False, rule=list_of(record(DGRAM), MAX_DGRAMS, DICT))


def read(s: socket.socket, where: str, peer: tuple | None) -> list[dict]:
    """The datagrams waiting on `s` (the tree stopped), oldest first; `peer`: its connected peer.
    They are received (a peek offset walk skips a zero-length datagram a program peeked at already)
    and sent back at once, as restore sends them (`deliver`): the tree finds them as they were."""
    if s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) != -1:
        raise FdError(errno.EOPNOTSUPP, f"{where}: UDP datagrams wait on a socket with a peek offset (SO_PEEK_OFF): "
                                        "not supported")
    out, total, why = [], 0, None
    try:
        while True:
            try:
                data, addr = s.recvfrom(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                continue   # (an error the socket held, ECONNREFUSED: returned before the datagrams)
            host = ipaddress.ip_address(addr[0].split("%")[0])
            mapped = host.version == 6 and host.ipv4_mapped is not None
            out.append({"from": str(host), "port": addr[1], "data": base64.b64encode(data).decode()})
            total += len(data)
            if why is None and not (host.ipv4_mapped if mapped else host).is_loopback:
                why = (f"a UDP datagram from {addr[0]} port {addr[1]}, off loopback (a restored network namespace "
                       "has lo only): not supported")
            if why is None and peer is not None and (addr[0], addr[1]) != peer:
                why = (f"a UDP datagram from {addr[0]} port {addr[1]} waits on a socket connected to {peer[0]} "
                       f"port {peer[1]}: not supported")
            if why is None and (len(out) > MAX_DGRAMS or total > MAX_BYTES):
                why = (f"more than {MAX_DGRAMS} UDP datagrams or {MAX_BYTES} bytes wait: not supported; let them be "
                       "read and dump again")
    finally:
        deliver(s, [d for d in out if _loopback(d["from"])], None)
    if why is not None:
        raise FdError(errno.EOPNOTSUPP, f"{where}: {why}")
    return out


def _loopback(host: str) -> bool:
    a = ipaddress.ip_address(host)
    return (a.ipv4_mapped if a.version == 6 and a.ipv4_mapped else a).is_loopback


def check(dgrams: list, family: str, what: str) -> None:
    """The validator's part: each sender a loopback address of the socket's family (an IPv4 one
    mapped into IPv6 on an inet6 socket)."""
    from engine.image import _fail
    for d in dgrams:
        try:
            a = ipaddress.ip_address(d["from"])
        except ValueError:
            _fail(f"{what}: bad UDP sender {d['from'][:60]!r}")
        if family == "inet" and a.version != 4 or not (a.ipv4_mapped or a if a.version == 6 else a).is_loopback:
            _fail(f"{what}: a UDP sender {d['from'][:60]!r} off loopback or of another family")


def _sum(b: bytes) -> int:
    """The Internet checksum of `b`."""
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _packet(src: str, sport: int, dst: str, dport: int, data: bytes) -> tuple[int, bytes]:
    """(family, an IP packet carrying UDP datagram `data` from src:sport to dst:dport)."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    a, b = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    ulen = 8 + len(data)
    if fam == socket.AF_INET:   # (the kernel fills in the IP header's checksum; UDP's 0: none)
        return fam, struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0, 64, 17, 0, a, b) + \
            struct.pack("!HHHH", sport, dport, ulen, 0) + data
    csum = _sum(a + b + struct.pack("!I3xB", ulen, 17) + struct.pack("!HHHH", sport, dport, ulen, 0) + data) or 0xFFFF
    return fam, struct.pack("!IHBB16s16s", 6 << 28, ulen, 17, 64, a, b) + \
        struct.pack("!HHHH", sport, dport, ulen, csum) + data


def _send_in(netns: int, packets: list) -> None:
    """In a child of the restorer: join network namespace `netns`, send `packets` [(family, dst, bytes)]."""
    from engine import kernel
    kernel.setns(netns, kernel.CLONE_NEWNET)
    for fam, dst, pkt in packets:
        with socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW) as r:
            if fam == socket.AF_INET6:
                r.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
            r.sendto(pkt, (dst, 0))


def deliver(s: socket.socket, dgrams: list, rcvbuf: int | None) -> None:
    """Send `dgrams` again to restored socket `s` (bound), in order, from their senders; its receive
    buffer forced wide for them meanwhile and set back to `rcvbuf` (its dumped size) by the caller."""
    from engine import forkrun
    from engine.fds import inet_net
    name = s.getsockname()
    packets = []
    for d in dgrams:
        src = ipaddress.ip_address(d["from"])
        v4 = src.version == 4 or src.ipv4_mapped is not None
        dst = ipaddress.ip_address(name[0].split("%")[0])
        if dst.version == 6 and dst.ipv4_mapped is not None:
            dst = dst.ipv4_mapped
        if dst.is_unspecified or (dst.version == 4) != v4:
            dst = ipaddress.ip_address("127.0.0.1" if v4 else "::1")
        src = src.ipv4_mapped if src.version == 6 and src.ipv4_mapped else src
        fam, pkt = _packet(str(src), d["port"], str(dst), name[1], base64.b64decode(d["data"]))
        packets.append((fam, str(dst), pkt))
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf + sum(len(p) + 1024 for _f, _d, p in packets))
    ns = inet_net.netns_fd(s.fileno())
    try:
        forkrun.run(_send_in, ns, packets)
    finally:
        os.close(ns)
