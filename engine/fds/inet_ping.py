"""Echo replies waiting on an ICMP "ping socket" (SOCK_DGRAM, IPPROTO_ICMP or IPPROTO_ICMPV6, which
net.ipv4.ping_group_range lets a group make: an unprivileged ping's) of the tree's own network
namespace: kept exact, in order, with their senders.

Kept rather than refused: a ping on lo has its reply queued as soon as it sent its request (the
kernel answers on lo within the send), so a tree stopped between that send and the receive holds
one; refusing it would fail a dump of any ping loop now and then.

A ping socket receives an echo reply as its ICMP message (header and data, its identifier the
socket's "port", its ident): dump (the tree stopped) receives them all and sends them back at once,
as restore does; restore sends each again, once every process holds its fds, from a raw socket of
the restored namespace (engine/fds/inet_raw.py) with its sender's address as source, to the
socket's address: the kernel gives it to the ping socket bound to its identifier. A raw ICMP socket
of the namespace sees those packets too (it saw the first ones already: not kept apart). Not kept:
the error queue (IP_RECVERR: ICMP errors), ancillary data (TTL, timestamps).
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import ipaddress
import socket
import struct

from engine.imageformat import DICT, LIST, STR, F, Record, b64, list_of, record
from engine.fds import FdError, inet_raw

ECHO_REPLY = {"inet": 0, "inet6": 129}
PROTO_NO = {"inet": 1, "inet6": 58}
MAX_REPLIES = 1024
MAX_BYTES = 1 << 20   # of one socket's replies
REPLY = Record("echo reply", {
    "from": F(STR, rule=lambda v: None if len(v) <= 64 else "is too long"),   # the sender's address (loopback)
    "data": F(STR, rule=b64(65535 - 48)),   # the ICMP message: header (type, code, checksum, ident, seq), data
})
FIELD = F(LIST, required=False, rule=list_of(record(REPLY), MAX_REPLIES, DICT))


_loopback = inet_raw.loopback   # (one rule for every inet kind)


def read(s: socket.socket, family: str, where: str) -> list[dict]:
    """The echo replies waiting on ping socket `s` (the tree stopped), oldest first; received and
    sent back at once, as restore sends them (`deliver`): the tree finds them as they were."""
    out, total, why = [], 0, None
    try:
        for data, addr in inet_raw.received(s):
            out.append({"from": addr[0].split("%")[0], "data": binascii.b2a_base64(data, newline=False).decode()})
            total += len(data)
            if why is None and not _loopback(addr[0]):
                why = (f"an echo reply from {addr[0]}, off loopback (a restored network namespace has lo only): "
                       "not supported")
            if why is None and (len(out) > MAX_REPLIES or total > MAX_BYTES):
                why = f"more than {MAX_REPLIES} echo replies or {MAX_BYTES} bytes wait: not supported; dump again"
    finally:
        deliver(s, family, [r for r in out if _loopback(r["from"])], None)
    if why is not None:
        raise FdError(errno.EOPNOTSUPP, f"{where}: {why}")
    return out


def check(replies: list, family: str, ident: int | None, what: str) -> None:
    """The validator's part: each sender a loopback address of the socket's family, each message an
    echo reply (type, code 0) to the socket's own identifier (`ident`, its port: a bound or
    autobound socket): restore sends nothing else into the namespace."""
    from engine.image import _fail
    if ident is None:
        _fail(f"{what}: echo replies wait only on a ping socket with an identifier ('port')")
    if sum(len(r["data"]) // 4 * 3 for r in replies) > MAX_BYTES + 2 * len(replies):
        _fail(f"{what}: more than {MAX_BYTES} bytes of echo replies")
    for r in replies:
        try:
            a = ipaddress.ip_address(r["from"])
        except ValueError:
            _fail(f"{what}: bad echo reply sender {r['from'][:60]!r}")
        if a.version != (4 if family == "inet" else 6) or not a.is_loopback:
            _fail(f"{what}: an echo reply sender {r['from'][:60]!r} off loopback or of another family")
        msg = binascii.a2b_base64(r["data"])
        if len(msg) < 8 or msg[0] != ECHO_REPLY[family] or msg[1] != 0 or struct.unpack_from("!H", msg, 4)[0] != ident:
            _fail(f"{what}: a waiting ICMP message that is not an echo reply to the socket's identifier {ident}")


def deliver(s: socket.socket, family: str, replies: list, rcvbuf: int | None) -> None:
    """Send `replies` again to ping socket `s` (its identifier its own again), in order, from their
    senders, to its address (127.0.0.1 or ::1 for a wildcard one); its receive buffer forced wide for
    them meanwhile and set back to `rcvbuf` (its dumped size) by the caller."""
    host = s.getsockname()[0].split("%")[0]
    dst = ipaddress.ip_address(host)
    if dst.is_unspecified:
        dst = ipaddress.ip_address("127.0.0.1" if family == "inet" else "::1")
    packets = [inet_raw.packet(r["from"], str(dst), PROTO_NO[family], binascii.a2b_base64(r["data"])) for r in replies]
    if rcvbuf is not None:
        inet_raw.widen(s, rcvbuf, packets)
    inet_raw.send(s, packets)
