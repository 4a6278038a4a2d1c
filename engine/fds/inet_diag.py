"""What the kernel lists of a network namespace's TCP and UDP sockets (NETLINK_SOCK_DIAG, inet_diag)
that no getsockopt tells: which directions a socket was shut down in (INET_DIAG_SHUTDOWN), by
inode; read once per network namespace and dump, in a child that joins it."""

from __future__ import annotations

import socket
import struct

from engine import forkrun, kernel

SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NLM_F_DUMP = 20, 1, 0x300
INET_DIAG_SHUTDOWN = 8
_REQ = struct.Struct("=BBBxI48x")      # inet_diag_req_v2: family, protocol, ext, states, (sockid: any)
# inet_diag_msg: family, state, timer, retrans, (sockid), expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB48xIIIII")


def _dump(family: int, proto: int) -> dict[int, dict]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 4)   # NETLINK_SOCK_DIAG
    try:
        req = _REQ.pack(family, proto, 0, 0xFFFFFFFF)
        s.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        out: dict[int, dict] = {}
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                ln, typ = struct.unpack_from("=IH", data, off)
                if typ == 3:   # NLMSG_DONE
                    return out
                if typ == 2:   # NLMSG_ERROR
                    raise OSError(-struct.unpack_from("=i", data, off + 16)[0], "inet_diag")
                _f, state, _t, _r, _e, rq, wq, uid, ino = _MSG.unpack_from(data, off + 16)
                rec = {"state": state, "rqueue": rq, "wqueue": wq, "uid": uid, "shutdown": 0}
                a = off + 16 + _MSG.size
                while a + 4 <= off + ln:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == INET_DIAG_SHUTDOWN:
                        rec["shutdown"] = data[a + 4]
                    a += (alen + 3) & ~3
                out[ino] = rec
                off += (ln + 3) & ~3
    finally:
        s.close()


def diag_all() -> dict[int, dict]:
    """{inode: {state, rqueue, wqueue, uid, shutdown}} of our network namespace's TCP and UDP sockets."""
    out = {}
    for fam in (socket.AF_INET, socket.AF_INET6):
        for proto in (6, 17):
            out.update(_dump(fam, proto))
    return out


def _in(fd: int) -> dict[int, dict]:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    return diag_all()


def lookup(d, ino: int, netns: int, netns_fd: int) -> dict | None:
    """inet_diag's record of socket `ino` of network namespace `netns` (our fd on it: `netns_fd`),
    None when it lists none (a socket made since the table was read is looked for in a fresh one)."""
    key = ("inet-diag", netns)
    table = d.scratch.get(key)
    if table is None or ino not in table:
        table = d.scratch[key] = forkrun.run(_in, netns_fd)
    return table.get(ino)

