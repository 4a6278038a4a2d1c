"""What the kernel lists of unix sockets (sock_diag, NETLINK_SOCK_DIAG): each socket's peer, its
file's device and inode, a listener's pending connections in queue order and the queue lengths; one
dump per network namespace, read in a child that joins it. Also the socket types the image names.
"""

from __future__ import annotations

import os
import socket
import struct

from engine import forkrun, kernel


SOCK_DIAG_BY_FAMILY = 20


NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300


UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS, UDIAG_SHOW_RQLEN = 1, 2, 4, 8, 16


UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS, UNIX_DIAG_RQLEN = 0, 1, 2, 3, 4
UNIX_DIAG_SHUTDOWN = 6   # (always sent: the socket's sk_shutdown, RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2)


TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}


def diag_all() -> dict[int, dict]:
    """{socket inode: {peer, backlog, vfs}} of every unix socket of our network namespace."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 4)  # NETLINK_SOCK_DIAG
    try:
        req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                          UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN, 0xFFFFFFFF,
                          0xFFFFFFFF)
        s.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        out: dict[int, dict] = {}
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off < len(data):
                ln, typ = struct.unpack_from("=IH", data, off)
                if typ == 3:   # NLMSG_DONE
                    return out
                if typ == 2:   # NLMSG_ERROR
                    raise OSError(-struct.unpack_from("=i", data, off + 16)[0], "sock_diag")
                _fam, _typ, state, _pad, ino = struct.unpack_from("=BBBBI", data, off + 16)
                rec = {"state": state}
                a = off + 16 + 16
                while a + 4 <= off + ln:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == UNIX_DIAG_PEER:
                        rec["peer"] = struct.unpack_from("=I", data, a + 4)[0]
                    elif atype == UNIX_DIAG_VFS:
                        rec["vfs"] = struct.unpack_from("=II", data, a + 4)
                    elif atype == UNIX_DIAG_ICONS:   # a listener's pending connections, in queue order
                        rec["icons"] = list(struct.unpack_from(f"={(alen - 4) // 4}I", data, a + 4))
                    elif atype == UNIX_DIAG_RQLEN:
                        rec["rqueue"], rec["wqueue"] = struct.unpack_from("=II", data, a + 4)
                    elif atype == UNIX_DIAG_SHUTDOWN:
                        rec["shutdown"] = data[a + 4]
                    a += (alen + 3) & ~3
                out[ino] = rec
                off += (ln + 3) & ~3
    finally:
        s.close()


def diag_in(pid: int) -> dict[int, dict]:
    """`diag_all` of the network namespace of process `pid`, read in a child that joins it."""

    def body(fd):
        kernel.setns(fd, kernel.CLONE_NEWNET)
        return diag_all()

    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return forkrun.run(body, fd)
    finally:
        os.close(fd)


def diag_of(d, netns: int) -> dict[int, dict]:
    """sock_diag's unix sockets of network namespace `netns` (d's process is in it), read once a dump."""
    diag = d.scratch.get(("unix", netns))
    if diag is None:
        diag = d.scratch[("unix", netns)] = diag_in(d.pid)
    return diag


def netns_of(d, ino: int, netns: int) -> tuple[int, dict]:
    """(network namespace, its `diag_of` table) of socket `ino` that a process in network
    namespace `netns` holds: that one, unless sock_diag lists the socket in another of the tree's."""
    diag = diag_of(d, netns)
    if ino not in diag:
        found = find_peer(d, ino, netns)
        if found is not None:
            return found
    return netns, diag


def find_peer(d, peer: int, netns: int) -> tuple[int, dict] | None:
    """(network namespace, its `diag_of` table) of the tree's network namespace other than `netns`
    whose sock_diag lists socket `peer`, or None. A socket connected through a socket file may have
    its peer in another network namespace (a container's service and a host agent): sock_diag lists
    a namespace's own sockets only."""
    seen = {netns}
    for pid in d.scratch.get("pids") or ():
        try:
            other = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if other in seen:
            continue
        seen.add(other)
        diag = d.scratch.get(("unix", other))
        if diag is None:
            try:
                diag = d.scratch[("unix", other)] = diag_in(pid)
            except OSError:
                continue
        if peer in diag:
            return other, diag
    return None


def embryos(diag: dict) -> dict[int, tuple[int, int]]:
    """{inode of the client of a connection not accepted yet: (its listener's inode, its place in the
    queue)} (a listener's UNIX_DIAG_ICONS name the clients)."""
    out = {}
    for ino, rec in diag.items():
        for i, e in enumerate(rec.get("icons") or ()):
            out[e] = (ino, i)
    return out


TYPE_NO = {v: k for k, v in TYPES.items()}
