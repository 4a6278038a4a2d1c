"""What the kernel tells of a network namespace's ping and raw inet sockets (which sock_diag's
inet_diag does not list: engine/fds/inet_diag.py is TCP's and UDP's) through /proc/net/icmp,
icmp6, raw and raw6, by inode: the owner (sk_uid), whether it is connected and to which address
(a ping socket connected with port 0, as ping connects, has no getpeername: ENOTCONN), and the
bytes waiting to be read. Read in a child that joins the namespace (/proc/self/net is the reader's
namespace's), once per namespace and dump."""

from __future__ import annotations

import socket
import struct

from engine import forkrun, kernel

FILES = ("icmp", "icmp6", "raw", "raw6")
TCP_ESTABLISHED = 1


def _host(hexed: str) -> str:
    """An address as /proc/net prints it (each 32-bit word in the host's byte order, in hex)."""
    words = [int(hexed[i:i + 8], 16) for i in range(0, len(hexed), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def parse(text: str) -> dict[int, dict]:
    """{inode: {uid, state, local, remote, rqueue}} of one /proc/net/{icmp,raw}[6] file's text."""
    out = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        (la, lp), (ra, rp) = (x.split(":") for x in f[1:3])
        out[int(f[9])] = {"uid": int(f[7]), "state": int(f[3], 16), "local": (_host(la), int(lp, 16)),
                          "remote": (_host(ra), int(rp, 16)), "rqueue": int(f[4].split(":")[1], 16),
                          "shutdown": 0}
    return out


def _all() -> dict[int, dict[int, dict]]:
    """{family: {inode: record}}: each file read as its family's. (The kernel's walk of a ping hash
    chain checks the family of its first socket only: an IPv4 ping socket sharing a bucket with an
    IPv6 one shows in icmp6 too, with '::' for its addresses; read as one table, that record
    overwrote the true one, now and then.)"""
    out: dict[int, dict[int, dict]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
    for name in FILES:
        try:
            with open(f"/proc/thread-self/net/{name}") as fh:
                out[socket.AF_INET6 if name.endswith("6") else socket.AF_INET].update(parse(fh.read()))
        except FileNotFoundError:
            continue   # (icmp6, raw6: a kernel without IPv6)
    return out


def _in(fd: int) -> dict[int, dict[int, dict]]:
    kernel.setns(fd, kernel.CLONE_NEWNET)
    return _all()


def lookup(d, ino: int, netns: int, netns_fd: int, family: int = socket.AF_INET) -> dict | None:
    """The /proc/net record of ping or raw socket `ino` (of `family`) of network namespace `netns`
    (our fd on it: `netns_fd`), None when none lists it."""
    key = ("inet-proc", netns)
    tables = d.scratch.get(key)
    if tables is None or ino not in tables[family]:
        tables = d.scratch[key] = forkrun.run(_in, netns_fd)
    return tables[family].get(ino)


def table_of(netns_fd: int, family: int) -> dict[int, dict]:
    """Every record of the sockets of `family` of network namespace `netns_fd` (the snapshot's)."""
    return forkrun.run(_in, netns_fd)[family]
