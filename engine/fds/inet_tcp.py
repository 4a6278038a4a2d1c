"""A TCP connection, established or half-closed (STATES), CRIU's way (kernel TCP_REPAIR): both
ends live in the tree's own network namespace, so while the tree is stopped nothing sends to them.

Dump puts our copy of the socket in repair mode for the read alone and takes it out at once
(TCP_REPAIR_OFF_NO_WP: no window probe, nothing sent; the kernel drops SO_REUSEADDR on the way out,
so it is set back): the sequence numbers of both queues (TCP_QUEUE_SEQ), their bytes (recv
MSG_PEEK per queue, TCP_REPAIR_QUEUE; the send queue's part not sent yet, SIOCOUTQNSD), the window
(TCP_REPAIR_WINDOW), the options the handshake agreed (mss, window scales, SACK, timestamps:
TCP_MAXSEG in repair mode, tcp_info) and the timestamp clock (TCP_TIMESTAMP). The tree is never
left in repair mode: a refused or --leave-running dump leaves it as it was.

Restore (the restorer, on the socket the stand-in made, so the repair needs no capability in the
tree's user namespace): repair on, both queues' first sequence numbers, bind, connect (in repair
mode: no packet, straight to ESTABLISHED), the options, the timestamp, the receive queue's bytes and
the send queue's sent part (as sent, not acknowledged: the peer acknowledges them, or they are sent
again), the window. It is made once every process holds its other fds (FdKind.deferred: a listener
of its port is bound first, which a socket in repair mode, bound beside anything, would keep from
binding), with its buffers forced wide enough for its queues; once every process holds its fds
(`late`: both ends exist, so nothing meets a closed port), every connection first gets its FINs
(`settle`: ours by a shutdown in repair mode, which sends nothing; the peer's FIN and its
acknowledgment of ours sent again from the peer's address through a raw socket, inet_raw.py, in
the order they came) and its receive buffer back; then each leaves repair mode, queues its unsent
part (and its FIN when that waited behind it) and gets its send buffer, SO_REUSEADDR and shutdown
directions back (engine/fds/inet.py).

A CLOSE_WAIT end whose peer its program closed (an orphan in FIN_WAIT2, which no process holds)
is made with that peer (`orphan_of`, "alone"): made in repair mode from the end's state, settled
first, let go of and closed, an orphan again, answering the end as the first one did (its
program reads the bytes, then the end; a write meets a reset). So is a LAST_ACK end (such an
end that closed its side too), whose orphan peer got its FIN (TIME_WAIT) or not yet (FIN_WAIT2):
made in FIN_WAIT2, it takes the FIN the end sends again as the first did, and its acknowledgment
ends the end (CLOSE) unless a rule of the tree drops it, as CRIU's socket-tcp-closed-last-ack's
does (the firewall is made once the connections settled: engine/restore.py).

A socket whose connection ended (CLOSE: FINs both ways, or reset and its error read since) is made
ESTABLISHED in repair mode with its names and unread bytes, then reset from its peer's address
(`_ended`), as soon as it is made: its program reads the bytes, then the end; a write says EPIPE.
One whose error was not read yet is refused (engine/fds/inet.py): only SO_ERROR tells which it is,
and that takes it. The kernel lets go of its port when it ends unless a bind gave it
(`port_held`): its connect takes it as an unbound socket's (`_autobound`), or a bind gives it where
the connect cannot (a port a listener's bind holds).

Refused: SYN_RECV (a handshake under way; a client's SYN_SENT is engine/fds/inet.py's), any other end whose peer no process of the
tree holds (a client waiting in a listener's queue is inet_pending's),
urgent data, a peek offset (SO_PEEK_OFF), queues over MAX_QUEUE bytes.
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import os
import socket
import struct

from engine.imageformat import BOOL, DICT, INT, LIST, STR, F, Record, b64, list_of, record, rng
from engine.fds import FdError

SOL_TCP = socket.IPPROTO_TCP
TCP_MAXSEG, TCP_INFO = 2, 11
IPV6_2292PKTOPTIONS = 6
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 19, 20, 21, 22
TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 24, 29
REPAIR_ON, REPAIR_OFF, REPAIR_OFF_NO_WP = 1, 0, -1
NO_QUEUE, RECV_QUEUE, SEND_QUEUE = 0, 1, 2
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD, SIOCATMARK = 0x541B, 0x5411, 0x894B, 0x8905
SO_PEEK_OFF, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 42, 32, 33
IP_BIND_ADDRESS_NO_PORT = 24
# The states kept: the FINs each has, in which order (restore makes them so).
# name: (state number, the peer's FIN received, ours sent, ours acknowledged, the peer's first)
STATES = {"ESTABLISHED": (1, 0, 0, 0, 0), "FIN_WAIT1": (4, 0, 1, 0, 0), "FIN_WAIT2": (5, 0, 1, 1, 0),
          "CLOSE_WAIT": (8, 1, 0, 0, 1), "LAST_ACK": (9, 1, 1, 0, 1), "CLOSING": (11, 1, 1, 0, 0),
          # (a connection that ended, by FINs or by a reset whose error was read since: made ESTABLISHED,
          # then reset (`_ended`), its error taken; its sequence numbers are no one's then, a FIN that
          # came is counted as a byte of its receive queue's)
          "CLOSE": (7, 0, 0, 0, 0)}
_BY_NO = {v[0]: k for k, v in STATES.items()}
# The states of an end whose peer may be an orphan (its program closed it once it had sent its FIN)
ALONE = ("CLOSE_WAIT", "LAST_ACK")
MAX_QUEUE = 1 << 24   # bytes per queue (net.ipv4.tcp_rmem's default maximum is 6 MiB)
_WINDOW = struct.Struct("=5I")   # struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup
_U32 = rng(0, (1 << 32) - 1)

# The image entry's "tcp" (engine/fds/inet.py): what restore gives the new socket in repair mode.
CONN = Record("tcp connection", {
    "send_seq": F(INT, rule=_U32),      # the first byte of the send queue (snd_una)
    "recv_seq": F(INT, rule=_U32),      # the first byte of the receive queue not read yet
    "sendq": F(STR, rule=b64(MAX_QUEUE)),   # sent and not acknowledged, then not sent yet
    "unsent": F(INT, rule=rng(0, MAX_QUEUE)),   # how many of sendq's last bytes were not sent
    "recvq": F(STR, rule=b64(MAX_QUEUE)),
    "window": F(LIST, rule=list_of(_U32, 5, INT)),   # tcp_repair_window, in its order
    "mss": F(INT, rule=rng(1, 65535)),
    "wscale": F(LIST, required=False, rule=list_of(rng(0, 14), 2, INT)),   # [ours to send, the peer's]
    "sack": F(BOOL),
    "timestamp": F(INT, required=False, rule=_U32),   # the socket's TCP timestamp clock (timestamps on)
    # ESTABLISHED, or a half-closed one's (STATES): the FINs past the queues, who sent first, ours acknowledged
    "state": F(STR, required=False, rule=lambda v: None if v in STATES else f"must be one of {sorted(STATES)}"),
    "fin_unsent": F(BOOL, required=False),   # our FIN was not sent yet: it follows the unsent bytes
    "alone": F(BOOL, required=False),   # an end (ALONE) whose peer is an orphan: made again from it
    # a CLOSE one still holds its port (bound by bind(), which sock_diag lists from Linux 6.10): made so
    "port_held": F(BOOL, required=False),
})
FIELD = F(DICT, required=False, rule=record(CONN))


def _int(s: socket.socket, opt: int) -> int:
    return s.getsockopt(SOL_TCP, opt)


def _ioctl(s: socket.socket, req: int) -> int:
    import fcntl
    return struct.unpack("i", fcntl.ioctl(s.fileno(), req, b"\0\0\0\0"))[0]


def peek_off(s: socket.socket) -> int:
    """The peek offset of TCP socket `s`, -1 when none is set. TCP takes one from Linux 6.9: before,
    getsockopt(SO_PEEK_OFF) fails with EOPNOTSUPP (5.10 and 6.1 refused every connection) and no
    offset can have been set."""
    try:
        return s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
        return -1


def precheck(s: socket.socket, state: int, where: str) -> None:
    """Refuse (FdError naming `where`) a connection `read` could not keep, without changing it."""
    from engine.fds.inet import TCP_STATES
    if state not in _BY_NO:
        raise FdError(errno.EOPNOTSUPP, f"{where}: a TCP connection in state {TCP_STATES.get(state, state)} (only "
                                        f"{', '.join(STATES)} ones are kept): not supported; dump again once it has "
                                        "settled")
    if peek_off(s) != -1:
        raise FdError(errno.EOPNOTSUPP, f"{where}: a TCP connection with a peek offset (SO_PEEK_OFF): not supported")
    if _ioctl(s, SIOCATMARK) or _urgent(s):
        raise FdError(errno.EOPNOTSUPP, f"{where}: a TCP connection with urgent data waiting (MSG_OOB): not "
                                        "supported; let the program read it and dump again")


def _urgent(s: socket.socket) -> bool:
    """Whether urgent data waits on connection `s`, at its mark or behind ordinary bytes (where
    SIOCATMARK is 0 and FIONREAD stops: dump kept the bytes before the mark alone, the rest lost).
    A peek of it (MSG_OOB | MSG_PEEK) takes nothing: its byte, or EAGAIN while only the peer's
    urgent pointer came; EINVAL: none waits (none sent, read already, or SO_OOBINLINE)."""
    try:
        s.recv(1, socket.MSG_OOB | socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return True


def read(s: socket.socket, where: str, reuseaddr: int) -> dict:
    """The "tcp" entry of established socket `s` (the tree stopped), read in repair mode, which is
    left at once; `reuseaddr`: its SO_REUSEADDR, which leaving repair mode clears."""
    try:
        s.setsockopt(SOL_TCP, TCP_REPAIR, REPAIR_ON)
    except OSError as e:
        raise FdError(e.errno or errno.EPERM, f"{where}: TCP_REPAIR on a connection: {e.strerror or e} "
                                              "(needs CAP_NET_ADMIN in its network namespace's user namespace)") from None
    try:
        info = s.getsockopt(SOL_TCP, TCP_INFO, 8)
        precheck(s, info[0], where)
        name = _BY_NO[info[0]]
        _n, fin_in, fin_out, acked, _first = STATES[name]
        out = {"mss": _int(s, TCP_MAXSEG), "sack": bool(info[5] & TCPI_OPT_SACK)}
        if info[5] & TCPI_OPT_WSCALE:
            out["wscale"] = [info[6] & 0xF, info[6] >> 4]
        if info[5] & TCPI_OPT_TIMESTAMPS:
            out["timestamp"] = _int(s, TCP_TIMESTAMP) & 0xFFFFFFFF
        out["window"] = list(_WINDOW.unpack(s.getsockopt(SOL_TCP, TCP_REPAIR_WINDOW, _WINDOW.size)))
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, RECV_QUEUE)
        nxt = _int(s, TCP_QUEUE_SEQ) & 0xFFFFFFFF
        recvq = _peek(s, _unread(s, where), "receive", where)
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, SEND_QUEUE)
        write = _int(s, TCP_QUEUE_SEQ) & 0xFFFFFFFF
        unsent = _ioctl(s, SIOCOUTQNSD)
        outq = _ioctl(s, SIOCOUTQ)
        if name == "CLOSE":   # (what a reset left unacknowledged is never sent nor read: CRIU drops it too)
            unsent = outq = 0
        fin_unsent = fin_out and unsent > 0   # (our FIN waits behind bytes the peer's window holds back)
        unsent -= fin_unsent
        if fin_out and not acked:
            outq -= 1   # (SIOCOUTQ counts our FIN, not acknowledged yet: it is not a byte of the queue)
        if acked and outq:   # (FIN_WAIT2: our FIN was acknowledged, and every byte before it)
            raise FdError(errno.EIO, f"{where}: {outq} bytes unacknowledged before an acknowledged FIN")
        sendq = _peek(s, outq, "send", where)
        s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, NO_QUEUE)
    finally:
        s.setsockopt(SOL_TCP, TCP_REPAIR, REPAIR_OFF_NO_WP)
        if reuseaddr:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuseaddr)
    # (a FIN takes a sequence number: rcv_nxt is past the peer's, write_seq past ours)
    if name != "ESTABLISHED":
        out["state"] = name
    if fin_unsent:
        out["fin_unsent"] = True
    out.update({"send_seq": (write - len(sendq) - fin_out) & 0xFFFFFFFF,
                "recv_seq": (nxt - len(recvq) - fin_in) & 0xFFFFFFFF,
                "sendq": binascii.b2a_base64(sendq, newline=False).decode(), "unsent": unsent,
                "recvq": binascii.b2a_base64(recvq, newline=False).decode()})
    return out


def _unread(s: socket.socket, where: str) -> int:
    """The bytes to read on connection `s` (repair mode, the tree stopped), FIONREAD's. It stops at
    an urgent mark ahead, whose byte a read passes over even once it was read out of band (MSG_OOB):
    a dump of the bytes before the mark lost the rest. SO_OOBINLINE on for a moment (nobody reads:
    the tree is stopped) counts them all: more is refused."""
    n = _ioctl(s, SIOCINQ)
    if s.getsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE):
        return n
    s.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    try:
        whole = _ioctl(s, SIOCINQ)
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 0)
    if whole != n:
        raise FdError(errno.EOPNOTSUPP, f"{where}: a TCP connection whose unread bytes hold an urgent byte (MSG_OOB) "
                                        "read out of band: not supported; let the program read past it and dump again")
    return n


def _peek(s: socket.socket, n: int, which: str, where: str) -> bytes:
    """The `n` bytes of the selected queue of `s` (repair mode: a peek of the send queue reads it)."""
    if n > MAX_QUEUE:
        raise FdError(errno.EOPNOTSUPP, f"{where}: {n} bytes in a TCP connection's {which} queue (more than "
                                        f"{MAX_QUEUE}): not supported; let them be read and dump again")
    data = s.recv(n, socket.MSG_PEEK | socket.MSG_DONTWAIT) if n else b""
    if len(data) != n:
        raise FdError(errno.EIO, f"{where}: read {len(data)} of the {n} bytes of a TCP connection's {which} queue")
    return data


def check(conn: dict, what: str) -> None:
    """The validator's part CONN's field rules leave: sizes that agree."""
    from engine.image import _fail
    if len(conn["window"]) != 5 or ("wscale" in conn and len(conn["wscale"]) != 2):
        _fail(f"{what}: a TCP connection's window has 5 numbers, its wscale 2")
    if conn["unsent"] > len(binascii.a2b_base64(conn["sendq"])):
        _fail(f"{what}: more TCP bytes unsent than in the send queue")
    _n, _in, fin_out, acked, _first = _fins(conn)
    if conn.get("fin_unsent") and not (fin_out and not acked):
        _fail(f"{what}: only a FIN sent and not acknowledged may wait behind unsent bytes")
    if conn.get("alone") and conn.get("state") not in ALONE:
        _fail(f"{what}: only a {' or '.join(ALONE)} end is made alone")
    if "port_held" in conn and conn.get("state") != "CLOSE" or conn.get("state") == "CLOSE" and (
            conn["sendq"] or conn.get("fin_unsent")):
        _fail(f"{what}: only an ended connection (CLOSE), whose send queue is empty, says whether it holds its port")


def make(s: socket.socket, conn: dict, local: tuple, peer: tuple, v6only: int = 0) -> None:
    """Put new socket `s` (not bound) in repair mode and make it connection `conn` from `local` to
    `peer`, its queues filled; it stays in repair mode until `release`. `v6only`: its IPV6_V6ONLY."""
    s.setsockopt(SOL_TCP, TCP_REPAIR, REPAIR_ON)
    # (room for both queues whatever the buffers were: `release`'s caller gives them back)
    sendq, recvq = binascii.a2b_base64(conn["sendq"]), binascii.a2b_base64(conn["recvq"])
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(sendq) + (1 << 20))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, len(recvq) + (1 << 20))
    s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, SEND_QUEUE)
    s.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, struct.unpack("i", struct.pack("I", conn["send_seq"]))[0])
    s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, RECV_QUEUE)
    s.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, struct.unpack("i", struct.pack("I", conn["recv_seq"]))[0])
    if s.family == socket.AF_INET6 and not v6only:
        # (a bind to a v6 address sets IPV6_V6ONLY for good, which a socket bound by its connect
        # has off: bound to the port alone, the connect gives it the address routing picks, ::1)
        local = ("::", *local[1:])
    if conn.get("state") != "CLOSE" or conn.get("port_held") or not _autobound(s, local, peer):
        s.bind(local)      # (repair mode binds beside a listener of the port: SK_FORCE_REUSE)
        s.connect(peer)    # (repair mode: no SYN, ESTABLISHED at once)
    opts = [(TCPOPT_MSS, conn["mss"])]
    if "wscale" in conn:
        opts.append((TCPOPT_WINDOW, conn["wscale"][0] | conn["wscale"][1] << 16))
    if conn["sack"]:
        opts.append((TCPOPT_SACK_PERM, 0))
    if "timestamp" in conn:
        opts.append((TCPOPT_TIMESTAMP, 0))
    s.setsockopt(SOL_TCP, TCP_REPAIR_OPTIONS, b"".join(struct.pack("=II", c, v) for c, v in opts))
    if "timestamp" in conn:
        s.setsockopt(SOL_TCP, TCP_TIMESTAMP, struct.pack("I", conn["timestamp"]))
    _write(s, RECV_QUEUE, recvq)
    _write(s, SEND_QUEUE, sendq[:len(sendq) - conn["unsent"]])
    window = list(conn["window"])
    if _fins(conn)[1]:   # (rcv_nxt stops before the peer's FIN until `release` brings it)
        rcv_nxt = (conn["recv_seq"] + len(recvq)) & 0xFFFFFFFF
        if (window[4] - rcv_nxt) & 0xFFFFFFFF == 1:
            window[4] = rcv_nxt
    s.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW, _WINDOW.pack(*window))
    s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, NO_QUEUE)
    if conn.get("state") != "CLOSE":
        _sync_mss(s)


def _sync_mss(s: socket.socket) -> None:
    """Compute again the segment size connection `s` sends with (mss_cache, what TCP_MAXSEG reads
    outside repair mode): the connect computed it from the default clamp, before TCPOPT_MSS and
    the window were given, and nothing computes it again while the path's MTU stays (a connection
    over lo restored sent 524-byte segments, not 32 KiB ones). Setting the IP options (none, as
    before: the header's size does not change) makes the kernel compute it from the clamp, the
    window and the path's MTU. IPv4: IP_OPTIONS. IPv6 computes it only when an options object is
    set, which emptied options (IPV6_HOPOPTS b"") are not: IPV6_2292PKTOPTIONS with a control
    buffer too short to hold a message sets one of no headers (a connection over ::1 came back
    sending 1208-byte segments, the minimum MTU's). Not the size the live connection had: that one
    came from its window at the handshake."""
    try:
        if s.family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_2292PKTOPTIONS, bytes(4))
    except OSError:
        pass   # (a kernel that refuses: the segment size stays the default's, as before)


def _autobound(s: socket.socket, local: tuple, peer: tuple) -> bool:
    """Connect `s` (repair mode) to `peer` from `local`, its port chosen by the connect as an unbound
    socket's is, from its network namespace's ephemeral range narrowed to that port for the connect
    alone (`_port_range`): the kernel lets go of such a port when the connection ends, of one a bind
    gave not (`port_held`). False, `s` left to be bound, where the connect cannot take it (a port a
    bind holds, a listener's; a reserved one): a bind then holds it, as CRIU's restore does."""
    from engine import forkrun
    from engine.fds import inet_net
    ns = inet_net.netns_fd(s.fileno())
    try:
        old = forkrun.run(_port_range, ns, [None, local[1], local[1]])
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((local[0], 0, *local[2:]))
            s.connect(peer)
        except OSError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.EADDRINUSE):
                raise
            return False
        finally:   # (the program's own IP_BIND_ADDRESS_NO_PORT comes back with its options)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 0)
            forkrun.run(_port_range, ns, old)
    finally:
        os.close(ns)
    if s.getsockname()[1] != local[1]:
        raise OSError(errno.EIO, f"connected from port {s.getsockname()[1]}, not {local[1]}")
    return True


_PORT_SYSCTLS = ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "/proc/sys/net/ipv4/ip_local_port_range")


def _port_range(netns: int, values: list) -> list:
    """(In a child) set network namespace `netns`'s first unprivileged port and ephemeral port range
    (low, high) to `values` (the first None: lowered to the range's low end if above it; the kernel
    keeps it at or below that, so it moves first when it goes down, last when it goes up); returns
    the old ones."""
    from engine import kernel
    kernel.setns(netns, kernel.CLONE_NEWNET)
    old = []
    for path in _PORT_SYSCTLS:
        with open(path) as f:
            old += [int(x) for x in f.read().split()]
    if values[0] is None:   # (no lower than it is unless the range goes there)
        values = [min(values[1], old[0]), *values[1:]]
    for path in _PORT_SYSCTLS if values[0] < old[0] else _PORT_SYSCTLS[::-1]:
        with open(path, "w") as f:
            f.write(" ".join(str(v) for v in (values[:1] if path == _PORT_SYSCTLS[0] else values[1:])))
    return old


def _fins(conn: dict) -> tuple:
    """STATES' entry of connection `conn`."""
    return STATES[conn.get("state", "ESTABLISHED")]


def _closing(s: socket.socket, conn: dict, local: tuple, peer: tuple, repair: bool) -> None:
    """Bring `s` (ESTABLISHED) to its half-closed state, as far as it gets in repair mode (`repair`)
    or then once out of it: our FIN queued as sent (shutdown in repair mode sends nothing), or
    after the unsent bytes once out of repair mode; the peer's FIN and its acknowledgment of ours
    sent again from the peer's address (engine/fds/inet_raw.py; the peer exists, in repair mode too),
    in the order they came."""
    from engine.fds import inet_raw
    _n, fin_in, fin_out, acked, peer_first = _fins(conn)
    late = bool(conn.get("fin_unsent"))
    rcv_nxt = (conn["recv_seq"] + len(binascii.a2b_base64(conn["recvq"]))) & 0xFFFFFFFF
    snd_una = conn["send_seq"]
    ours = (snd_una + len(binascii.a2b_base64(conn["sendq"]))) & 0xFFFFFFFF   # (our FIN's sequence number)
    window = conn["window"][1] >> (conn["wscale"][0] if "wscale" in conn else 0)

    def fin_in_now():   # (acknowledging what we sent before our FIN, not the FIN)
        inet_raw.send(s, [inet_raw.tcp(peer, local, rcv_nxt, snd_una, inet_raw.TCP_FIN | inet_raw.TCP_ACK, window)])

    def fin_out_now():
        if repair:
            s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, SEND_QUEUE)
        s.shutdown(socket.SHUT_WR)
        if repair:
            s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, NO_QUEUE)
    if repair and fin_in and peer_first:
        fin_in_now()
    if fin_out and late != repair:
        fin_out_now()
    if fin_in and not peer_first and late != repair:
        fin_in_now()
    if repair and acked:
        inet_raw.send(s, [inet_raw.tcp(peer, local, rcv_nxt, ours + 1, inet_raw.TCP_ACK, window)])
    state = s.getsockopt(SOL_TCP, TCP_INFO, 1)[0]
    want = STATES[conn["state"]][0] if not (repair and late) else (8 if fin_in and peer_first else 1)
    if state != want:
        from engine.fds.inet import TCP_STATES
        raise OSError(errno.EIO, f"the connection is {TCP_STATES.get(state, state)} once its peer's last segments "
                                 f"came again, not {TCP_STATES.get(want, want)}")


def _write(s: socket.socket, queue: int, data: bytes) -> None:
    """Write `data` into `queue` of `s` (repair mode: the receive queue as received, the send queue
    as sent); never waits (a blocking socket over its buffer would)."""
    s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, queue)
    view = memoryview(data)
    while view:
        view = view[s.send(view, socket.MSG_DONTWAIT):]


def orphan_of(conn: dict) -> dict:
    """The connection of the orphan peer of CLOSE_WAIT or LAST_ACK end `conn` (`alone`): its program closed it
    once it had read everything and sent its FIN, which `conn` acknowledged (FIN_WAIT2; a reset
    would have left `conn` CLOSE), so it holds no byte; made again in repair mode and closed once
    out of it, it is an orphan in FIN_WAIT2 again, answering `conn` as the first did."""
    rcv_nxt = (conn["send_seq"]) & 0xFFFFFFFF   # (what it acknowledged: conn's unacknowledged bytes it drops)
    fin = (conn["recv_seq"] + len(binascii.a2b_base64(conn["recvq"]))) & 0xFFFFFFFF
    snd_wnd, rcv_wnd = conn["window"][3], conn["window"][1]
    out = {"send_seq": fin, "recv_seq": rcv_nxt, "sendq": "", "unsent": 0, "recvq": "",
           "window": [rcv_nxt, snd_wnd, max(snd_wnd, conn["window"][2]), rcv_wnd, rcv_nxt],
           "mss": conn["mss"], "sack": conn["sack"], "state": "FIN_WAIT2"}
    if "wscale" in conn:
        out["wscale"] = conn["wscale"][::-1]
    if "timestamp" in conn:
        out["timestamp"] = conn["timestamp"]
    return out


def _ended(s: socket.socket, conn: dict, local: tuple, peer: tuple) -> None:
    """End connection `s` (ESTABLISHED, in repair mode) as its peer's reset does, which no packet
    answers (a FIN would be acknowledged, to a peer that may be an ended socket being made too: its
    reset would end the peer's making), then take the error the reset left (ECONNRESET): a program
    reads its bytes, then the end (RCV_SHUTDOWN); a write says EPIPE."""
    from engine.fds import inet_raw
    rcv_nxt = (conn["recv_seq"] + len(binascii.a2b_base64(conn["recvq"]))) & 0xFFFFFFFF
    inet_raw.send(s, [inet_raw.tcp(peer, local, rcv_nxt, conn["send_seq"], inet_raw.TCP_RST | inet_raw.TCP_ACK, 0)])
    state = s.getsockopt(SOL_TCP, TCP_INFO, 1)[0]
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if state != STATES["CLOSE"][0] or err != errno.ECONNRESET:
        from engine.fds.inet import TCP_STATES
        raise OSError(errno.EIO, f"the connection is {TCP_STATES.get(state, state)} (error {err}) once reset, not "
                                 "CLOSE (error ECONNRESET)")


def settle(s: socket.socket, conn: dict, local: tuple, peer: tuple) -> None:
    """Give half-closed connection `s` (`conn` from `local` to `peer`, (address, port) each, an IPv4
    one mapped into IPv6 as IPv4) the FINs it had, as far as repair mode goes (`_closing`): done for
    every connection before any leaves repair mode (`release`), whose first packets would move the
    peer's sequence numbers past those of the segments sent again here."""
    if conn.get("state") == "CLOSE":
        _ended(s, conn, local, peer)
    elif "state" in conn:
        _closing(s, conn, local, peer, True)


def release(s: socket.socket, conn: dict, local: tuple, peer: tuple) -> None:
    """Take `s` (`settle`'s) out of repair mode (a window probe tells the peer our window), queue
    the bytes that were not sent yet (its buffers are `make`'s then: the caller sets its options
    back), then our FIN when it waited behind them. An end `alone` sends no window probe (its
    orphan peer, closed at the end, takes none)."""
    s.setsockopt(SOL_TCP, TCP_REPAIR, REPAIR_OFF_NO_WP if conn.get("alone") else REPAIR_OFF)
    sendq = binascii.a2b_base64(conn["sendq"])
    view = memoryview(sendq)[len(sendq) - conn["unsent"]:]
    while view:
        view = view[s.send(view, socket.MSG_DONTWAIT):]
    if conn.get("fin_unsent"):
        _closing(s, conn, local, peer, False)
