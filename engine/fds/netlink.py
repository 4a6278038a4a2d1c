"""Netlink sockets (journald's audit and uevent sockets, a root dbus-daemon's audit socket, the
rtnetlink and generic netlink sockets of systemd and its tools): made again empty, with what
the socket keeps about itself.

Kept: protocol, type, the port id it is bound to (the kernel's autobind picks the process's
pid, or a negative number; restore binds that id again so replies still find it), every
multicast group it listens to (NETLINK_LIST_MEMBERSHIPS), the port and group it is connected
to, its netlink flags (pktinfo, broadcast errors, no ENOBUFS, all nsids, cap ack, extended
ack, strict checking) and its receive and send buffer sizes. Refused at dump: messages waiting
to be read (a reply or an event the process has not read yet cannot be sent again by anyone
but the kernel). Not kept: a dump in progress (the next recv of a restored socket sees no
more of it), the audit daemon's registration, a NETLINK_SOCK_DIAG or uevent socket's filter
(SO_ATTACH_FILTER: BPF programs are not read back).

A netlink socket's fd is classified as a socket by engine/fds/unix.py, which hands it here
(`dump`); restore finds this kind by name.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from engine.imageformat import INT, LIST, STR, F
from engine.fds import FdError, FdKind, RestoreFd, register

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_LIST_MEMBERSHIPS = 1, 9
# Flags getsockopt reads back: (option, name).
FLAGS = ((3, "pktinfo"), (4, "broadcast_error"), (5, "no_enobufs"), (8, "listen_all_nsid"), (10, "cap_ack"),
         (11, "ext_ack"), (12, "get_strict_chk"))
TYPES = {socket.SOCK_RAW: "raw", socket.SOCK_DGRAM: "dgram"}
MAX_GROUPS = 4096


def refuse(d, s: socket.socket) -> int:
    """Refuse netlink socket `s` (our copy of fd d.fd) when restore cannot make it again: a type it
    does not make, or messages waiting to be read (a peek, which takes nothing: also before the
    tree is stopped, engine/prestop.py). Returns its type."""
    typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if typ not in TYPES:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: netlink socket of type {typ}: not supported")
    try:
        s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        waiting = True
    except BlockingIOError:
        waiting = False
    if waiting:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: netlink messages wait to be read on it (only the kernel could "
                                        "send them again): not supported")
    return typ


def dump(d, s: socket.socket) -> dict:
    """The entry of netlink socket `s` (our copy of fd d.fd)."""
    typ = refuse(d, s)
    port, _groups = s.getsockname()
    raw = s.getsockopt(SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 4 * (MAX_GROUPS // 32))
    words = struct.unpack(f"{len(raw) // 4}I", raw)
    groups = [32 * i + b + 1 for i, w in enumerate(words) for b in range(32) if w >> b & 1]
    peer = s.getpeername()
    out = {"protocol": s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), "type": TYPES[typ], "port": port,
           "groups": groups, "rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
           "sndbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
           "nlflags": [name for opt, name in FLAGS if _flag(s, opt)]}
    if peer[0] or peer[1]:
        out["peer"] = list(peer)
    return out


def _flag(s: socket.socket, opt: int) -> bool:
    try:
        return bool(s.getsockopt(SOL_NETLINK, opt))
    except OSError:
        return False


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail
    if entry.get("type") not in TYPES.values() or not 0 <= entry.get("protocol", -1) < 32 \
            or not -(1 << 31) <= entry.get("port", 1 << 32) < 1 << 32:
        _fail(f"{what}: bad netlink socket")
    g = entry.get("groups")
    if not isinstance(g, list) or len(g) > MAX_GROUPS or not all(type(x) is int and 0 < x <= MAX_GROUPS for x in g):
        _fail(f"{what}: bad netlink groups")
    if not all(type(entry.get(k)) is int and 0 < entry[k] < 1 << 31 for k in ("rcvbuf", "sndbuf")):
        _fail(f"{what}: bad netlink buffer sizes")
    names = {name for _, name in FLAGS}
    if not isinstance(entry.get("nlflags"), list) or not set(entry["nlflags"]) <= names:
        _fail(f"{what}: bad netlink flags")
    p = entry.get("peer")
    if p is not None and (not isinstance(p, list) or len(p) != 2 or not all(type(x) is int for x in p)):
        _fail(f"{what}: bad netlink peer")


def _make(spec, fds):
    """In the stand-in (its network namespace): the socket, bound and connected as dumped."""
    s = socket.socket(socket.AF_NETLINK, {"raw": socket.SOCK_RAW, "dgram": socket.SOCK_DGRAM}[spec["type"]],
                      spec["protocol"])
    try:
        # (SO_*BUFFORCE: the sizes were set by a privileged process, or above the sysctl maxima)
        for opt, force, key in ((socket.SO_RCVBUF, 33, "rcvbuf"), (socket.SO_SNDBUF, 32, "sndbuf")):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, spec[key] // 2)   # (the kernel doubles it)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, opt, spec[key] // 2)
        for opt, name in FLAGS:
            if name in spec["nlflags"]:
                s.setsockopt(SOL_NETLINK, opt, 1)
        if spec["port"]:
            s.bind((spec["port"], 0))
        for g in spec["groups"]:
            s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
        if "peer" in spec:
            s.connect(tuple(spec["peer"]))
        return None, [s.detach()]
    finally:
        s.close()


def _open(r: RestoreFd) -> int:
    e = r.entry
    spec = {k: e[k] for k in ("protocol", "type", "port", "groups", "rcvbuf", "sndbuf", "nlflags", "peer") if k in e}
    fd = r.standin("make", spec)[0]
    if e["flags"] & os.O_NONBLOCK:
        os.set_blocking(fd, False)
    if spec["groups"]:
        # Events the restore itself causes in the namespace (its lo brought up for an inet socket
        # made after this one: links, addresses, routes) reach a subscribed socket; the dumped
        # one held none (refused otherwise), so they are dropped once every fd exists.
        copy = os.dup(fd)
        r.late.append((f"{r.where}: dropping the events the restore caused", lambda: _drain(copy)))
    return fd


def _drain(fd: int) -> None:
    s = socket.socket(fileno=fd)
    try:
        while True:
            try:
                s.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:   # (an overrun, told once: the queue is still there)
                    raise
    finally:
        s.close()


# Never classified from a /proc link (every socket is "socket:[N]"): engine/fds/unix.py hands
# netlink sockets here by their family.
register(FdKind(name="netlink", matches=lambda t, m: False, dump=lambda d: {}, open=_open, check=_check,
                standin={"make": _make},
                fields={"protocol": F(INT), "type": F(STR), "port": F(INT), "groups": F(LIST), "rcvbuf": F(INT),
                        "sndbuf": F(INT), "nlflags": F(LIST), "peer": F(LIST, required=False)}))
