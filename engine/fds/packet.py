"""Packet sockets (AF_PACKET, SOCK_RAW or SOCK_DGRAM: dhclient's, systemd-networkd's, tcpdump's, an
LLDP agent's) of a network namespace the tree owns (the same rule as inet sockets:
engine/fds/inet_net.py): their protocol (an ethertype), the device they are bound to, by NAME (the
restored namespace's device of that name, whatever its index: lo, or a device restore makes there),
their PACKET_* options (version, reserve, auxdata, origdev, vnet_hdr, loss, timestamp, qdisc_bypass,
ignore_outgoing), SOL_SOCKET options (engine/fds/inet_opts.py's) and classic socket filter
(engine/fds/inet_filter.py).

Refused, before the stop and again at dump: a mapped ring (PACKET_RX_RING, PACKET_TX_RING: the
program's memory holds its frames), a fanout group (PACKET_FANOUT: other sockets, maybe outside
the tree, share it), a multicast or promiscuous membership (PACKET_ADD_MEMBERSHIP: it changes its
device), a packet waiting (sent again it would reach every socket of the namespace), a SOCK_PACKET
socket (the obsolete kind), one bound to a device that is gone. Not kept: PACKET_COPY_THRESH, the
statistics (PACKET_STATISTICS: reading them resets them). Its owner (sk_uid) is kept as an inet
socket's (engine/fds/inet.py `made_as`: the thread that takes it raises CAP_NET_RAW again).

Read with packet_diag (NETLINK_SOCK_DIAG, AF_PACKET) in a child that joins the socket's network
namespace: its device's index, rings, fanout and memberships.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from engine.imageformat import DICT, INT, MAX_UID, STR, F, rng
# (inet: its owner's maker, `made_as`; imported here, before restore pivots away from the engine)
from engine.fds import FdError, FdKind, RestoreFd, inet, inet_filter, inet_net, inet_opts, register, unix_bind

SOL_PACKET = 263
TYPES = {socket.SOCK_RAW: "raw", socket.SOCK_DGRAM: "dgram"}
TYPE_NO = {v: k for k, v in TYPES.items()}
OPTS = {"version": 10, "reserve": 12, "auxdata": 8, "origdev": 9, "vnet_hdr": 15, "loss": 14, "timestamp": 17,
        "qdisc_bypass": 20, "ignore_outgoing": 23}
PACKET_FANOUT = 18
SOCK_DIAG_BY_FAMILY = 20
SHOW = 0x1 | 0x2 | 0x4 | 0x8   # PACKET_SHOW_INFO, _MCLIST, _RING_CFG, _FANOUT
DIAG_INFO, DIAG_MCLIST, DIAG_RX_RING, DIAG_TX_RING, DIAG_FANOUT, DIAG_UID = 0, 1, 2, 3, 4, 5


def _diag_in(fd: int) -> dict[int, dict]:
    from engine import kernel
    kernel.setns(fd, kernel.CLONE_NEWNET)
    req = struct.pack("=BBHII2I", socket.AF_PACKET, 0, 0, 0, SHOW, 0, 0)   # packet_diag_req
    out = {}
    for _t, msg in inet_net.netlink_dump(4, SOCK_DIAG_BY_FAMILY, req, "packet_diag"):
        _f, _typ, _num, ino = struct.unpack_from("=BBHI", msg, 0)
        attrs = inet_net.attrs(msg, 16)   # (packet_diag_msg: family, type, num, ino, cookie[2])
        info = attrs.get(DIAG_INFO, b"")
        uid = attrs.get(DIAG_UID, b"")
        out[ino] = {"ifindex": struct.unpack_from("=I", info)[0] if len(info) >= 4 else 0,
                    "uid": struct.unpack_from("=I", uid)[0] if len(uid) >= 4 else None,
                    "ring": DIAG_RX_RING in attrs or DIAG_TX_RING in attrs, "fanout": DIAG_FANOUT in attrs,
                    "mclist": bool(attrs.get(DIAG_MCLIST))}
    return out


def _record(d, ino: int, netns: int, ns_fd: int) -> dict | None:
    from engine import forkrun
    key = ("packet-diag", netns)
    table = d.scratch.get(key)
    if table is None or ino not in table:
        table = d.scratch[key] = forkrun.run(_diag_in, ns_fd)
    return table.get(ino)


def read(d, s: socket.socket, rec: dict | None) -> dict:
    """The entry of packet socket `s` (our copy of fd d.fd; `rec`: its packet_diag record), or FdError
    naming d for what restore cannot make exactly."""
    where = d.where
    typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if typ not in TYPES:
        raise FdError(errno.EOPNOTSUPP, f"{where}: a packet socket of type {typ} (SOCK_PACKET): not supported")
    if rec is None:
        raise FdError(errno.EOPNOTSUPP, f"{where}: sock_diag does not list this packet socket (packet_diag not in "
                                        "the kernel?): not supported")
    for bad, why in (("ring", "a mapped ring (PACKET_RX_RING, PACKET_TX_RING)"),
                     ("fanout", "a fanout group (PACKET_FANOUT)"),
                     ("mclist", "a multicast or promiscuous membership (PACKET_ADD_MEMBERSHIP)")):
        if rec[bad]:
            raise FdError(errno.EOPNOTSUPP, f"{where}: a packet socket with {why}: not supported")
    if struct.unpack_from("=I", s.getsockopt(socket.SOL_SOCKET, 55, 36))[0]:   # SO_MEMINFO: receive memory
        raise FdError(errno.EOPNOTSUPP, f"{where}: packets wait on a packet socket: not supported; dump again once "
                                        "the program has read them")
    dev, proto = s.getsockname()[:2]   # (its device's name as its own namespace calls it)
    out = {"type": TYPES[typ], "protocol": proto}
    if rec["uid"] is not None:
        out["uid"] = rec["uid"]   # (its owner, sk_uid, as the dumper names it)
    if rec["ifindex"]:
        if not dev:
            raise FdError(errno.EOPNOTSUPP, f"{where}: a packet socket bound to device {rec['ifindex']}, which is "
                                            "gone: not supported")
        out["dev"] = dev
    out["popts"] = {name: s.getsockopt(SOL_PACKET, num) for name, num in OPTS.items()}
    out["opts"] = {k: v for k, v in inet_opts.read(s, "packet", "packet").items()
                   if inet_opts.OPTS[k][0] == socket.SOL_SOCKET}
    filt = inet_filter.read(s, where)
    if filt is not None:
        out["filter"] = filt
    return out


def _with_socket(d) -> dict:
    from engine import forkrun
    c = d.copy()
    ns = inet_net.netns_fd(c)
    try:
        netns, _lo = inet_net.check(d, ns, d.where)
        with socket.socket(fileno=os.dup(c)) as s:
            out = read(d, s, _record(d, os.fstat(c).st_ino, netns, ns))
        if "uid" in out and unix_bind._here(out["uid"], "uid_map", ranges=inet._map_of(d.pid)) is None:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a packet socket owned by uid {out['uid']}, which its "
                                            "process's user namespace does not map: not supported")
        return out
    except FdError:
        raise
    except (OSError, forkrun.ChildError) as e:   # (named as this kind's, not as unix's which handed it here)
        raise FdError(getattr(e, "errno", None) or errno.EIO,
                      f"{d.where}: packet: {getattr(e, 'strerror', None) or e}") from None
    finally:
        os.close(ns)


def precheck(d) -> None:
    """Before the tree is stopped: refuse what `read` and the namespace check refuse."""
    _with_socket(d)


def dump(d) -> dict:
    """The image entry of packet socket fd `d`."""
    return _with_socket(d)


def _check(e: dict, what: str) -> None:
    from engine.image import _fail
    if e["type"] not in TYPE_NO:
        _fail(f"{what}: a packet socket is of type raw or dgram")
    if "dev" in e and not (0 < len(e["dev"]) < 16 and "/" not in e["dev"] and "\0" not in e["dev"]):
        _fail(f"{what}: bad packet socket device name {e['dev'][:40]!r}")
    if set(e["popts"]) - set(OPTS) or any(type(v) is not int or not 0 <= v < 1 << 31 for v in e["popts"].values()):
        _fail(f"{what}: bad packet socket options (PACKET_*: {', '.join(OPTS)})")
    if any(k not in inet_opts.OPTS or inet_opts.OPTS[k][0] != socket.SOL_SOCKET for k in e["opts"]):
        _fail(f"{what}: a packet socket's options are SOL_SOCKET ones")
    inet_opts.check(e["opts"], "packet", "packet", what)


def _make(spec, fds):
    """In the stand-in (the restored network namespace): the socket, its filter, options, then bound
    to its device by name."""
    s = inet.made_as(spec.get("uid"), lambda: socket.socket(socket.AF_PACKET, TYPE_NO[spec["type"]],
                                                            socket.htons(spec["protocol"])), raw=True)
    try:
        if "filter" in spec:
            inet_filter.attach(s, spec["filter"])
        for name, want in spec["popts"].items():
            if s.getsockopt(SOL_PACKET, OPTS[name]) != want:
                try:
                    s.setsockopt(SOL_PACKET, OPTS[name], want)
                except OSError as e:
                    raise FdError(e.errno or errno.EINVAL, f"packet socket option {name} {want}: {e.strerror or e}") \
                        from None
        inet_opts.apply(s, spec["opts"])
        if "dev" in spec:
            try:
                s.bind((spec["dev"], spec["protocol"]))
            except OSError as e:
                raise FdError(e.errno or errno.ENODEV, f"binding a packet socket to device {spec['dev']}: "
                                                       f"{e.strerror or e}") from None
        return None, [s.detach()]
    finally:
        s.close()


def _open(r: RestoreFd) -> int:
    e = r.entry
    fd = r.standin("make", {k: e[k] for k in ("type", "protocol", "dev", "popts", "opts", "filter", "uid")
                            if k in e})[0]
    if e["flags"] & os.O_NONBLOCK:
        os.set_blocking(fd, False)
    return fd


# Never classified from a /proc link (every socket is "socket:[N]"): engine/fds/unix.py hands packet
# sockets here by their family. Made in the process's network namespace, which must be one restore
# makes (imageformat: own_netns).
register(FdKind(name="packet", matches=lambda t, m: False, dump=dump, open=_open, check=_check,
                standin={"make": _make}, own_netns=True, ids=lambda e: {"uid": [e["uid"]]} if "uid" in e else {},
                fields={"type": F(STR),
                        "protocol": F(INT, rule=rng(0, 65535)),   # (an ethertype: ETH_P_ALL 3, ETH_P_IP 0x800...)
                        # the device it is bound to, by name (absent: every device, or none with protocol 0)
                        "dev": F(STR, required=False),
                        "popts": F(DICT),   # PACKET_* options: {name: int}
                        "opts": F(DICT),    # SOL_SOCKET options (engine/fds/inet_opts.py's names)
                        "filter": inet_filter.FIELD,
                        # its owner (sk_uid) as the dumper names it, taken by the thread that makes it
                        "uid": F(INT, required=False, rule=rng(0, MAX_UID))}))
