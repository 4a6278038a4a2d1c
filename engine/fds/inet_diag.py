"""What the kernel lists of a network namespace's TCP, UDP and UDP-Lite sockets (NETLINK_SOCK_DIAG, inet_diag)
that no getsockopt tells: which directions a socket was shut down in (INET_DIAG_SHUTDOWN), by
inode; read once per network namespace and dump, in a child that joins it. With `info` (the
snapshot's): each socket's two ends and a TCP socket's bytes not sent yet (tcp_info's
tcpi_notsent_bytes), to find a connection's other end in the namespace."""

from __future__ import annotations

import socket
import struct

from engine import forkrun, kernel
from engine.fds import inet_net

SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO, INET_DIAG_SHUTDOWN = 2, 8
_NOTSENT_AT = 144   # struct tcp_info's tcpi_notsent_bytes (Linux >= 4.6)
_REQ = struct.Struct("=BBBxI48x")      # inet_diag_req_v2: family, protocol, ext, states, (sockid: any)
# inet_diag_msg: family, state, timer, retrans, (sockid), expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB48xIIIII")


def _dump(family: int, proto: int, info: bool = False) -> dict[int, dict]:
    out: dict[int, dict] = {}
    ext = 1 << (INET_DIAG_INFO - 1) if info and proto == 6 else 0
    req = _REQ.pack(family, proto, ext, 0xFFFFFFFF)
    size = 4 if family == socket.AF_INET else 16
    for _t, msg in inet_net.netlink_dump(4, SOCK_DIAG_BY_FAMILY, req, "inet_diag"):   # NETLINK_SOCK_DIAG
        _f, state, _t, _r, _e, rq, wq, uid, ino = _MSG.unpack_from(msg, 0)
        rec = {"state": state, "rqueue": rq, "wqueue": wq, "uid": uid, "shutdown": 0}
        attrs = inet_net.attrs(msg, _MSG.size)
        shutdown = attrs.get(INET_DIAG_SHUTDOWN)
        if shutdown:
            rec["shutdown"] = shutdown[0]
        if info:
            # (inet_diag_sockid: source and destination port, big-endian, then the two addresses)
            sport, dport = struct.unpack_from("!HH", msg, 4)
            rec["local"] = (socket.inet_ntop(family, msg[8:8 + size]), sport)
            rec["remote"] = (socket.inet_ntop(family, msg[24:24 + size]), dport)
            tcpi = attrs.get(INET_DIAG_INFO)
            if tcpi is not None and len(tcpi) >= _NOTSENT_AT + 4:
                rec["notsent"] = struct.unpack_from("=I", tcpi, _NOTSENT_AT)[0]
        out[ino] = rec
    return out


def diag_all(info: bool = False) -> dict[int, dict]:
    """{inode: {state, rqueue, wqueue, uid, shutdown}} of our network namespace's TCP, UDP and
    UDP-Lite sockets; with `info`, local and remote (host, port) too, and a TCP socket's notsent."""
    out = {}
    for fam in (socket.AF_INET, socket.AF_INET6):
        for proto in (6, 17, 136):
            try:
                out.update(_dump(fam, proto, info))
            except OSError:
                if proto != 136:
                    raise
                # (a kernel without UDP-Lite, or whose udp_diag lacks it: a bound UDP-Lite socket it
                # does not list is refused, engine/fds/inet.py)
    return out


def _in(fd: int, info: bool = False) -> dict[int, dict]:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    return diag_all(info)


def lookup(d, ino: int, netns: int, netns_fd: int, info: bool = False) -> dict | None:
    """inet_diag's record of socket `ino` of network namespace `netns` (our fd on it: `netns_fd`),
    None when it lists none (a socket made since the table was read is looked for in a fresh one);
    with `info`, its local and remote names too (`diag_all`)."""
    key = ("inet-diag", netns, info)
    table = d.scratch.get(key)
    if table is None or ino not in table:
        table = d.scratch[key] = forkrun.run(_in, netns_fd, info)
    return table.get(ino)

