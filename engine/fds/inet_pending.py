"""TCP connections waiting in a listener's accept queue, whose clients the tree holds: made again
by connecting each client to the restored listener, in queue order, and sending what it had sent.

The server end of such a connection is the kernel's: no fd reaches it before accept(), and no
call puts a socket made in repair mode into a listener's queue. Dump's last step (`takes`, never
with --leave-running: the tree would lose them) accepts each on our copy of the listener, reads
what it received (engine/fds/inet_tcp.py, in repair mode) and gives its client's entry "pending":
its place in the queue and the bytes the client sent that no one read (those the server end
received, then those of the client's send queue past them); the accepted socket is closed in repair
mode (no reset reaches the client: a failed dump resumes the tree with that connection dead, its
client never told). The client's entry loses its "tcp": at restore it is a new socket, bound to its
port, connected for real once every process holds its fds, which lands a new server end in the
listener's queue; then it sends the bytes again. Its sequence numbers are new ones (no program
reads them); the connection's handshake options are the loopback's again.
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import os
import select
import socket

from engine.imageformat import INT, STR, F, Record, b64, record, rng
from engine.fds import FdError, inet_tcp

PENDING = Record("pending tcp connection", {
    "order": F(INT, rule=rng(0, (1 << 31) - 1)),   # its place in the listener's queue
    "sent": F(STR, rule=b64(inet_tcp.MAX_QUEUE)),   # what the client sent that nobody read
})
FIELD = F((dict,), required=False, rule=record(PENDING))
AFTER = 1 << 31   # (a late step's order after every pending client's connect: theirs are below)
TIMEOUT = 10.0   # seconds for a connect or a send over loopback (a full listener queue: an error)


def take(lst: int, queued: int, doc: dict, obj: str, where: str) -> None:
    """Accept the `queued` connections waiting on listener `lst` (our copy; closed here), the tree
    stopped, and give each client's entries in `doc` (of network namespace object `obj`) "pending"."""
    from engine.fds.inet import end_key
    s = socket.socket(fileno=lst)
    try:
        for order in range(queued):
            a, _ = s.accept()   # (each is there: the tree is stopped)
            try:
                local, peer = end_key(*a.getsockname()[:2]), end_key(*a.getpeername()[:2])
                server = inet_tcp.read(a, where, 0)
                a.setsockopt(inet_tcp.SOL_TCP, inet_tcp.TCP_REPAIR, inet_tcp.REPAIR_ON)   # (closed without a reset)
            finally:
                a.close()
            clients = [e for p in doc["processes"] for e in p["fds"]
                       if e.get("kind") == "inet" and e.get("obj") == obj and "tcp" in e
                       and end_key(e["addr"], e["port"]) == peer and end_key(e["peer"], e["peer_port"]) == local]
            if not clients:
                raise FdError(errno.EOPNOTSUPP, f"{where}: the client of a connection waiting to be accepted "
                                                f"(from {peer[0]} port {peer[1]}) is no fd of the tree: not supported")
            sent = _unread(server, clients[0]["tcp"])
            for e in clients:
                del e["tcp"]
                e["pending"] = {"order": order, "sent": binascii.b2a_base64(sent, newline=False).decode()}
    finally:
        s.close()


def _unread(server: dict, client: dict) -> bytes:
    """The bytes a client sent that its connection's server end never gave to a reader: those the
    server end holds, then those of the client's send queue past them (sequence numbers tell)."""
    got = binascii.a2b_base64(server["recvq"])
    sendq = binascii.a2b_base64(client["sendq"])
    rcv_nxt = (server["recv_seq"] + len(got)) & 0xFFFFFFFF
    skip = (rcv_nxt - client["send_seq"]) & 0xFFFFFFFF   # (how much of sendq the server end has)
    return got + sendq[skip:] if skip <= len(sendq) else got


def connect(s: socket.socket, local: tuple, peer: tuple, pending: dict, v6only: int = 0) -> None:
    """Bind new socket `s` to `local`, connect it to the listener at `peer` (it lands in its queue)
    and send `pending`'s bytes, waiting at most TIMEOUT for each (`s` may be nonblocking)."""
    if s.family == socket.AF_INET6 and not v6only:
        local = ("::", *local[1:])   # (as inet_tcp.make: an address bound would set IPV6_V6ONLY)
    s.bind(local)
    try:
        s.connect(peer)
    except BlockingIOError:
        _wait(s, "connecting")
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err)) from None
    view = memoryview(binascii.a2b_base64(pending["sent"]))
    while view:
        try:
            view = view[s.send(view, socket.MSG_DONTWAIT):]
        except BlockingIOError:
            _wait(s, "sending what it had sent")


def connect_now(s: socket.socket, local: tuple, peer: tuple, v6only: int = 0) -> None:
    """Bind new socket `s` to `local` and start its connect to `peer` without waiting for it
    (engine/fds/inet.py: a client that was connecting, SYN_SENT); its blocking mode is kept."""
    if s.family == socket.AF_INET6 and not v6only:
        local = ("::", *local[1:])   # (as `connect`)
    s.bind(local)
    blocking = os.get_blocking(s.fileno())
    os.set_blocking(s.fileno(), False)
    try:
        err = s.connect_ex(peer)
    finally:
        os.set_blocking(s.fileno(), blocking)
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, os.strerror(err))


def _wait(s: socket.socket, what: str) -> None:
    if not select.select([], [s], [], TIMEOUT)[1]:
        raise OSError(errno.ETIMEDOUT, f"{what}: no progress in {TIMEOUT:g} s")
