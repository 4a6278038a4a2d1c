"""Datagrams waiting on a UDP socket of the tree's own network namespace: kept with their order,
boundaries (a zero-length one too) and senders' addresses and ports.

Dump (the tree stopped) receives them all and sends them back to the socket at once, as restore
does (a peek offset, SO_PEEK_OFF, walks the queue but skips a zero-length datagram a program
peeked at already; one the socket has already is refused). Their senders are addresses of that
namespace, which holds only lo's (engine/fds/inet_net.py): a sender off loopback (never sent back:
it could not be) or, to a connected socket, another than its peer (it would not take it again) is
refused.

Restore sends each again, once every process holds its fds, from a raw socket of the restored
namespace (engine/fds/inet_raw.py) with the sender's address and port as
its source: a sender's port a socket of the tree holds again is no obstacle, and the receiver sees
the same sender. Not kept: the destination address of a datagram to a socket bound to a wildcard
address (sent to 127.0.0.1 or ::1), ancillary data (IP_PKTINFO, timestamps), an error the socket
holds (ECONNREFUSED: dump's read takes it from a socket with datagrams waiting, a running tree too).
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import ipaddress
import socket

from engine.imageformat import DICT, INT, LIST, STR, F, Record, b64, list_of, record, rng
from engine.fds import FdError, inet_raw

SO_PEEK_OFF = 42
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
        for data, addr in inet_raw.received(s):
            host = ipaddress.ip_address(addr[0].split("%")[0])
            mapped = host.version == 6 and host.ipv4_mapped is not None
            out.append({"from": str(host), "port": addr[1], "data": binascii.b2a_base64(data, newline=False).decode()})
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


_loopback = inet_raw.loopback   # (one rule for every inet kind)


def check(dgrams: list, family: str, what: str) -> None:
    """The validator's part: each sender a loopback address of the socket's family (an IPv4 one
    mapped into IPv6 on an inet6 socket), each datagram one a UDP header and its IP packet hold
    (restore builds them: engine/fds/inet_raw.py), at most MAX_BYTES in all, as dump keeps."""
    from engine.image import _fail
    if sum(len(d["data"]) // 4 * 3 for d in dgrams) > MAX_BYTES + 2 * len(dgrams):   # (base64: padding aside)
        _fail(f"{what}: more than {MAX_BYTES} bytes of UDP datagrams")
    for d in dgrams:
        try:
            a = ipaddress.ip_address(d["from"])
        except ValueError:
            _fail(f"{what}: bad UDP sender {d['from'][:60]!r}")
        if family == "inet" and a.version != 4 or not (a.ipv4_mapped or a if a.version == 6 else a).is_loopback:
            _fail(f"{what}: a UDP sender {d['from'][:60]!r} off loopback or of another family")
        most = 65535 - 20 - 8 if a.version == 4 or a.ipv4_mapped else 65535 - 8   # (IPv4's total length, UDP's)
        if len(binascii.a2b_base64(d["data"])) > most:
            _fail(f"{what}: a UDP datagram of more than {most} bytes from {d['from']}")


def deliver(s: socket.socket, dgrams: list, rcvbuf: int | None) -> None:
    """Send `dgrams` again to restored socket `s` (bound), in order, from their senders; its receive
    buffer forced wide for them meanwhile and set back to `rcvbuf` (its dumped size) by the caller."""
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
        packets.append(inet_raw.udp(str(src), d["port"], str(dst), name[1], binascii.a2b_base64(d["data"])))
    if rcvbuf is not None:
        inet_raw.widen(s, rcvbuf, packets)
    inet_raw.send(s, packets)
