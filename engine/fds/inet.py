"""Inet sockets (IPv4, IPv6; TCP, UDP, UDP-Lite, ICMP ping sockets, raw sockets of any protocol) of a network
namespace the tree owns, in the states a new socket can be put in exactly: created and not bound,
bound to an address and port (a ping socket's port: its identifier; a raw socket binds an address
alone), a TCP listener with its backlog, a UDP, ping or raw socket (connected to a loopback peer,
or not); with the options it was given (engine/fds/inet_opts.py: a raw socket's IP_HDRINCL and
ICMP filter too, a UDP-Lite socket's checksum coverage), and its owner (sk_uid: `_new`).

A TCP connection whose two ends the tree holds, established or half-closed, is made again in repair mode
(engine/fds/inet_tcp.py), and so is a TCP socket whose connection ended (CLOSE), before any fd
(`_prepare`); the clients of a listener's connections waiting to be accepted connect
to it again (engine/fds/inet_pending.py); datagrams waiting on a UDP socket are sent to it again
from their senders' addresses (engine/fds/inet_udp.py), echo replies waiting on a ping socket likewise
(engine/fds/inet_ping.py). A ping or raw socket's owner and peer are read from /proc/net
(engine/fds/inet_proc.py: sock_diag lists neither).

A TCP client whose connect is under way (SYN_SENT) is bound again and connects again, once the
firewall is made (`_connect_syn_sent`).

Refused, before the tree is stopped (engine/prestop.py) and again at dump: a TCP connection in a
handshake (SYN_RECV) or whose other end the tree does not hold (inet_tcp), a TCP socket whose connection
ended with an error its program has not read (only SO_ERROR tells which, and takes it), a
listener with a connection waiting to be accepted whose client the tree does not hold, or with
--leave-running (only accept() reads what its client sent), a UDP, ping or raw socket connected to
a peer off loopback, a raw or UDP-Lite socket with a packet waiting (`_datagrams`), a UDP one's
datagram corked (UDP_CORK: not sent yet, nothing reads it back), SCTP and MPTCP sockets, an eBPF socket
filter and a filter on a TCP connection (engine/fds/inet_filter.py: a classic filter is kept), and
any socket of a network namespace restore would not make as it was (engine/fds/inet_net.py: the host's, one
shared with processes outside the tree, one with interfaces or addresses a fresh one lacks).

Restore makes the socket in the stand-in of the process that holds it (in the restored network
namespace), after bringing that namespace's lo up when it was up: the image object of kind "inet"
each socket names ("obj") is its network namespace.

A socket's fd is classified as a socket by engine/fds/unix.py, which hands an inet one here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import termios

from engine import threadids
from engine.imageformat import BOOL, INT, MAX_UID, STR, DICT, F, rng
from engine.fds import (FdError, FdKind, RestoreFd, inet_diag, inet_filter, inet_net, inet_opts, inet_pending,
                        inet_ping, inet_proc, inet_raw, inet_tcp, inet_udp, register, unix_bind)

FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
FAMILY_NO = {v: k for k, v in FAMILIES.items()}
# (a ping socket is ICMP's in inet, ICMPv6's in inet6: a raw socket of any protocol is "raw")
PROTOS = {(socket.SOCK_STREAM, 6): "tcp", (socket.SOCK_DGRAM, 17): "udp", (socket.SOCK_DGRAM, 1): "ping",
          (socket.SOCK_DGRAM, inet_opts.IPPROTO_UDPLITE): "udplite",
          (socket.SOCK_DGRAM, 58): "ping"}
TYPE_NO = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "ping": socket.SOCK_DGRAM, "raw": socket.SOCK_RAW,
           "udplite": socket.SOCK_DGRAM}
UDPS = ("udp", "udplite")   # (UDP-Lite: UDP whose checksum covers what its socket says, UDPLITE_*_CSCOV)
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
TCP_SYN_SENT, TCP_CLOSE, TCP_LISTEN = 2, 7, 10
TCP_INFO, SO_MEMINFO = 11, 55
CAP_NET_RAW = 13
MAX_BACKLOG = 1 << 31   # (listen() takes an int; the kernel caps it at net.core.somaxconn)


def _tcp_info(s: socket.socket) -> tuple[int, int, int]:
    """(state, accept queue length, backlog) of TCP socket `s` (struct tcp_info: a listener's
    tcpi_unacked and tcpi_sacked are its accept queue's length and its backlog)."""
    raw = s.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 32)
    return raw[0], *struct.unpack_from("=II", raw, 24)


def _used(s: socket.socket) -> bool:
    """Whether closed TCP socket `s` had a connection (tcp_info's tcpi_segs_out, tcpi_segs_in: a
    reset or refused one keeps its port in getsockname, unbound; no new socket is that)."""
    raw = s.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 144)
    return len(raw) >= 144 and any(struct.unpack_from("=II", raw, 136))


SO_PEERNAME = 28


def peer_name(s: socket.socket) -> tuple[str, int] | None:
    """The other end of TCP socket `s`, which a socket whose connection ended (CLOSE) still names to
    SO_PEERNAME (getpeername says ENOTCONN then); None for one never connected."""
    size = 16 if s.family == socket.AF_INET else 28
    try:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, size)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise
        return None
    port = struct.unpack_from("!H", raw, 2)[0]
    if s.family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    return _name((socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, 0, struct.unpack_from("=I", raw, 24)[0]))


def error_pending(s: socket.socket) -> bool:
    """Whether `s` holds an error its program has not read (SO_ERROR would take it; poll's POLLERR
    only looks)."""
    import select
    p = select.poll()
    p.register(s.fileno(), select.POLLIN)
    return any(ev & select.POLLERR for _fd, ev in p.poll(0))


def _waiting(s: socket.socket) -> bool:
    """Whether a datagram waits on `s` (SO_MEMINFO's receive memory: a zero-length one counts; a peek
    would consume an error the socket holds, ECONNREFUSED from a port no one listens on)."""
    return struct.unpack_from("=I", s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0] > 0


def _name(addr: tuple) -> tuple[str, int]:
    host = addr[0]
    if len(addr) == 4 and addr[3]:
        host = f"{host.split('%')[0]}%{addr[3]}"   # (a link-local address's scope: an interface index)
    return host, addr[1]


_loopback = inet_raw.loopback   # (one rule for every inet kind)


def end_key(host: str, port: int) -> tuple[str, int]:
    """One spelling of a connection's end, whichever family's socket names it (an IPv4 address
    mapped into IPv6 is the IPv4 one)."""
    a = ipaddress.ip_address(host.split("%")[0])
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return str(a), port


def read(d, s: socket.socket, rec: dict | None, stopped: bool = False) -> dict:
    """The entry of inet socket `s` (our copy of fd d.fd; `rec`: its inet_diag record), or FdError (a
    line naming d) for what restore cannot make exactly. Only reads while the tree runs
    (engine/prestop.py); once it is `stopped`, a TCP connection is read in repair mode (inet_tcp)."""
    fam = FAMILIES[s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)]
    proto = proto_of(s)
    if proto is None:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: {fam} socket (protocol "
                                        f"{s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}): not supported "
                                        "(only TCP, UDP, UDP-Lite, ping and raw)")
    out = {"family": fam, "proto": proto}
    filt = inet_filter.read(s, d.where)
    if filt is not None:
        out["filter"] = filt
    host, port = _name(s.getsockname())
    if proto == "raw":   # (a raw socket's "port" is its protocol: it binds an address alone)
        out["protocol"], port = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), 0
    if port or not ipaddress.ip_address(host.split("%")[0]).is_unspecified:
        out.update({"addr": host, "port": port})
    if proto == "tcp":
        st, queued, backlog = _tcp_info(s)
        if st == TCP_LISTEN:
            out["listen"] = backlog
            if queued:
                _pending(d, s, out, queued, stopped)
        elif st == TCP_SYN_SENT:
            _syn_sent(d, out, rec, host, filt)
        elif st != TCP_CLOSE or _used(s):
            _connection(d, s, out, st, host, filt, stopped)
            if stopped and st == TCP_CLOSE:   # (sock_diag lists an ended one that holds its port: Linux 6.10)
                out["tcp"]["port_held"] = rec is not None
    else:
        _datagrams(d, s, out, rec, stopped)
    if rec is None and ("listen" in out or proto in UDPS and "addr" in out):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: sock_diag does not list this {fam} socket (inet_diag, udp_diag "
                                        "not in the kernel?): not supported")
    # (sock_diag lists no unbound socket, nor a bound TCP one that does not listen before Linux 6.10:
    # such a socket's shutdown, which only a program that shut down a socket never connected sets, is not kept)
    if rec is not None:
        out["uid"] = rec["uid"]   # (the socket's owner, sk_uid: who made it, as the dumper names it)
    if rec is not None and rec["shutdown"]:
        if "listen" in out:   # (a listener shut down for reading stops listening: not one)
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP listener shut down: not supported")
        out["shutdown"] = rec["shutdown"]
    # (a UDP socket's corked datagram, not sent yet; a listener has no send queue: EINVAL)
    unsent = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0] if proto in UDPS else 0
    if unsent:   # (no call reads them back)
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: {unsent} bytes not sent yet on the {proto} socket of port "
                                        f"{port} (UDP_CORK): not supported; dump again once the program has sent "
                                        "them (UDP_CORK off, or a send without MSG_MORE)")
    out["opts"] = inet_opts.read(s, fam, proto, unconnected(s, proto))
    return out


def unconnected(s: socket.socket, proto: str) -> bool:
    """Whether inet socket `s` is a TCP listener or a TCP socket never connected: one that shows the
    options of inet_opts.UNCONNECTED."""
    if proto != "tcp":
        return False
    st = _tcp_info(s)[0]
    return st == TCP_LISTEN or (st == TCP_CLOSE and not _used(s))


def _connection(d, s: socket.socket, out: dict, st: int, host: str, filt, stopped: bool) -> None:
    """A TCP connection (`st` its state), or a socket whose connection ended (CLOSE: closed by FINs
    both ways, or reset, its error read since; made again as one reset, inet_tcp): its peer
    and, once `stopped`, what repair mode reads (inet_tcp.read)."""
    inet_tcp.precheck(s, st, d.where)   # (first: a handshake's socket has no peer name)
    peer = peer_name(s) if st == TCP_CLOSE else _name(s.getpeername())
    if peer is None:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP socket whose connection ended and that was disconnected "
                                        "since (connect to AF_UNSPEC): a new socket cannot be made so: not supported")
    if st == TCP_CLOSE and error_pending(s):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP socket whose connection ended holds an error its program "
                                        "has not read (ECONNRESET, ETIMEDOUT...: only reading it tells which, and that "
                                        "takes it from the program): not supported; dump again once the program has "
                                        "read it (SO_ERROR, a read or a write)")
    if filt is not None:   # (restore sends its peer's segments through it as it makes it)
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP connection with a socket filter: not supported")
    if not _loopback(peer[0]) or not _loopback(host):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP connection from {host} to {peer[0]} port {peer[1]}, "
                                        "off loopback (a restored network namespace has lo only): not supported")
    out["peer"], out["peer_port"] = peer
    # (for `_refuse_lone`: a CLOSE_WAIT or LAST_ACK end may be alone; an ended one is no connection: None)
    out["_alone"] = None if st == TCP_CLOSE else st in (inet_tcp.STATES[n][0] for n in inet_tcp.ALONE)
    if stopped:
        out["tcp"] = inet_tcp.read(s, d.where, s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))


def _syn_sent(d, out: dict, rec: dict | None, host: str, filt) -> None:
    """A TCP client whose connect is under way (SYN_SENT: nothing answered its SYN yet; CRIU's
    socket-tcp-syn-sent drops the answer with a rule): its peer, which only sock_diag tells (no
    peer name yet). Restore binds a new socket to its address and port and connects it again
    without waiting, once the firewall is made (`_connect_syn_sent`): its SYN goes out again."""
    peer = rec.get("remote") if rec is not None else None
    if peer is None or "port" not in out:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP client connecting (SYN_SENT) that sock_diag does not "
                                        "list with its names: not supported")
    if filt is not None:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP connection with a socket filter: not supported")
    if not _loopback(peer[0]) or not _loopback(host):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP client connecting from {host} to {peer[0]} port "
                                        f"{peer[1]}, off loopback (a restored network namespace has lo only): "
                                        "not supported")
    out["peer"], out["peer_port"] = peer
    out["syn_sent"] = True
    out["_alone"] = None   # (no connection yet: `_refuse_lone` does not look for its other end)


def proto_of(s: socket.socket) -> str | None:
    """The image's name of inet socket `s`'s protocol (PROTOS, "raw"), None for one not kept."""
    typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    return "raw" if typ == socket.SOCK_RAW else PROTOS.get((typ, s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)))


def _datagrams(d, s: socket.socket, out: dict, rec: dict | None, stopped: bool) -> None:
    """A UDP, ping or raw socket's peer and what waits on it: a UDP socket's datagrams, sent again from
    their senders (engine/fds/inet_udp.py); a ping socket's echo replies, sent again likewise
    (engine/fds/inet_ping.py); a raw socket with a packet waiting is refused (sent again, it would
    reach the namespace's protocol too, which answers an echo request, and every raw socket of it)."""
    proto, where = out["proto"], d.where
    try:
        peer = _name(s.getpeername())
    except OSError:   # (a ping or raw socket connected to port 0 has no peer name: /proc/net tells it)
        peer = rec["remote"] if proto not in UDPS and rec is not None and rec["state"] == inet_proc.TCP_ESTABLISHED \
            else None
    if _waiting(s):
        if proto in ("raw", "udplite"):   # (UDP-Lite's: sent again as UDP's are, their checksum's cover is theirs)
            what = f"a raw socket (protocol {out['protocol']})" if proto == "raw" else "a UDP-Lite socket"
            raise FdError(errno.EOPNOTSUPP, f"{where}: packets wait on {what}: not supported; dump again once the "
                                            "program has read them")
        if proto == "udp" and s.getsockopt(socket.SOL_SOCKET, inet_udp.SO_PEEK_OFF) != -1:   # (ping has none)
            raise FdError(errno.EOPNOTSUPP, f"{where}: UDP datagrams wait on a socket with a peek offset "
                                            "(SO_PEEK_OFF): not supported")
        key = "dgrams" if proto == "udp" else "replies"
        if stopped:
            out[key] = inet_udp.read(s, where, peer) if proto == "udp" else inet_ping.read(s, out["family"], where)
            if not out[key]:
                del out[key]   # (an error the socket holds, not a datagram)
    if peer is not None:
        if not ipaddress.ip_address(peer[0].split("%")[0]).is_loopback:
            raise FdError(errno.EOPNOTSUPP, f"{where}: a {proto} socket connected to {peer[0]} port {peer[1]}, off "
                                            "loopback (a restored network namespace has lo only): not supported")
        out["peer"], out["peer_port"] = peer


def _pending(d, s: socket.socket, out: dict, queued: int, stopped: bool) -> None:
    """A listener with `queued` connections waiting to be accepted: their clients are connected
    again at restore, in queue order (engine/fds/inet_pending.py). What each client sent waits in
    the server end the kernel made, which only accept() reaches: dump's last step (`takes`) accepts
    them (never with --leave-running, which is refused then)."""
    if not stopped and d.scratch.get("leave_running") or stopped and d.scratch.get("takes") is None:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a TCP listener on port {out.get('port')} with {queued} "
                                        "connection(s) waiting to be accepted: dump reads them by accepting them, "
                                        "which takes them from the tree, and --leave-running forbids that: not supported")
    out["queued"] = queued
    key = ("inet-take", os.fstat(s.fileno()).st_ino)
    if stopped and key not in d.scratch:   # (once for a listener its dups share)
        ns = inet_net.netns_fd(s.fileno())
        try:
            ino = os.fstat(ns).st_ino
        finally:
            os.close(ns)
        d.scratch[key] = lst = os.dup(s.fileno())
        # (its network namespace's object is named by `dump`, before the take runs)
        d.scratch["takes"].append(lambda doc: inet_pending.take(lst, queued, doc, d.scratch["inet-objects"][ino],
                                                                d.where))


def _with_socket(d, stopped: bool = False) -> tuple[dict, int, bool]:
    """(`read`'s entry of fd d, its network namespace's inode, whether its lo is up), or FdError; a
    TCP connection's ends are noted for `prefinish` (d.scratch["inet-conns"])."""
    from engine import forkrun
    c = d.copy()
    ns = inet_net.netns_fd(c)
    try:
        netns, lo = inet_net.check(d, ns, d.where)
        with socket.socket(fileno=os.dup(c)) as s:
            ino = os.fstat(c).st_ino
            rec = inet_proc.lookup(d, ino, netns, ns, s.family) if proto_of(s) in ("ping", "raw") else \
                inet_diag.lookup(d, ino, netns, ns)   # (sock_diag lists neither ping nor raw sockets)
            if rec is not None and rec["state"] == TCP_SYN_SENT:   # (its peer: sock_diag's names, `_syn_sent`)
                rec = inet_diag.lookup(d, ino, netns, ns, info=True)
            out = read(d, s, rec, stopped)
        if "uid" in out and unix_bind._here(out["uid"], "uid_map", ranges=_map_of(d.pid)) is None:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: an inet socket owned by uid {out['uid']}, which its process's "
                                            "user namespace does not map (its stand-in could not make it so): "
                                            "not supported")
    except FdError:
        raise
    except (OSError, forkrun.ChildError) as e:   # (named as this kind's, not as unix's which handed it here)
        raise FdError(getattr(e, "errno", None) or errno.EIO,
                      f"{d.where}: inet: {getattr(e, 'strerror', None) or e}") from None
    finally:
        os.close(ns)
    if out["proto"] == "tcp" and "peer" in out and out["_alone"] is not None:
        d.scratch.setdefault("inet-conns", []).append(
            (netns, end_key(out["addr"], out["port"]), end_key(out["peer"], out["peer_port"]), d.where,
             out["_alone"]))
    out.pop("_alone", None)
    if out.get("queued"):
        d.scratch.setdefault("inet-queues", []).append(
            (netns, end_key(out.get("addr", "0.0.0.0"), out["port"]), out["queued"], d.where))
    return out, netns, lo


def prefinish(scratch: dict) -> None:
    """Once every socket of the tree was prechecked: refuse a TCP connection whose other end no
    process of the tree holds, and a listener's queue with a connection of no client of the tree
    (engine/fds/unix_prestop.py calls this: inet fds are unix's at first)."""
    _refuse_lone(scratch.pop("inet-conns", []), scratch.pop("inet-queues", []))


def _refuse_lone(conns: list, queues: list) -> set:
    """Refuse the first of `conns` [(netns, local, peer, where, may be alone)] whose reverse is not
    among them, that waits in no listener's queue (`queues`: [(netns, listener's end, connections
    waiting, where)]) and may not be alone (a CLOSE_WAIT or LAST_ACK end may: its peer is an
    orphan its program closed, FIN_WAIT2 or TIME_WAIT, which answers nothing but a FIN or a reset,
    as a port nobody holds does); then a listener whose queue holds a connection of no client of the tree (one closed). An fd and its
    dups give the same connection several times: it counts once. Returns the lone ends."""
    have = {(ns, a, b) for ns, a, b, _w, _l in conns}
    lists = {(ns, key): (n, where) for ns, key, n, where in queues}
    waiting: dict = {}
    alone = set()
    for ns, a, b, where, may in {c[:3]: c for c in conns}.values():
        if (ns, b, a) in have:
            continue
        lst = next(((ns, (h, b[1])) for h in (b[0], "0.0.0.0", "::") if (ns, (h, b[1])) in lists), None)
        if lst is None and may:
            alone.add((ns, a, b))
            continue
        if lst is None:
            raise FdError(errno.EOPNOTSUPP, f"{where}: a TCP connection to {b[0]} port {b[1]} whose other end no "
                                            "process of the tree holds (closed, or waiting in the queue of a "
                                            "listener the tree does not hold): not supported; dump again once "
                                            "the connection has ended (an ended one is kept)")
        waiting[lst] = waiting.get(lst, 0) + 1
    for lst, (n, where) in lists.items():
        if waiting.get(lst, 0) != n:
            raise FdError(errno.EOPNOTSUPP, f"{where}: a TCP listener on port {lst[1][1]} with {n} connection(s) "
                                            f"waiting to be accepted, {waiting.get(lst, 0)} of them from clients the "
                                            "tree holds (the client of another closed, or another listener on the "
                                            "port): not supported")
    return alone


def _finish(objects: dict, entries: list[dict]) -> None:
    """Once every fd is dumped: each TCP connection's other end is an fd of the tree too (restore
    makes both; one alone would meet a port nobody holds), or waits in a listener's queue, or is
    an orphan a CLOSE_WAIT or LAST_ACK end may have."""
    where = lambda e: f"fd {e['fd']} (inet)"   # noqa: E731
    tcp = [e for e in entries if e.get("kind") == "inet" and "tcp" in e and e["tcp"].get("state") != "CLOSE"]
    key = lambda e: (e["obj"], end_key(e["addr"], e["port"]), end_key(e["peer"], e["peer_port"]))   # noqa: E731
    conns = [(*key(e), where(e), e["tcp"].get("state") in inet_tcp.ALONE) for e in tcp]
    queues = [(e["obj"], end_key(e.get("addr", "0.0.0.0"), e["port"]), e["queued"], where(e))
              for e in entries if e.get("kind") == "inet" and e.get("queued")]
    alone = _refuse_lone(conns, queues)
    for e in tcp:
        if key(e) in alone:
            e["tcp"]["alone"] = True   # (restore leaves repair mode without a window probe)


def _map_of(pid: int) -> list[tuple[int, int, int]]:
    """/proc/PID/uid_map of process `pid`, as the dumper reads it (outside ids: the dumper's)."""
    with open(f"/proc/{pid}/uid_map") as f:
        return [tuple(int(x) for x in line.split()) for line in f]


def precheck(d) -> None:
    """Before the tree is stopped: refuse what `read` and the namespace check refuse."""
    _with_socket(d)


def dump(d) -> dict:
    """The image entry of inet fd `d`, naming its network namespace's object (created here once)."""
    out, ino, lo = _with_socket(d, stopped=True)
    ids = d.scratch.setdefault("inet-objects", {})
    key = ids.get(ino)
    if key is None:
        key = ids[ino] = f"inetns-{len(ids) + 1}"
        d.objects[key] = {"kind": "inet", "lo": "up" if lo else "down"}
    out["obj"] = key
    return out


def _check(e: dict, what: str) -> None:
    from engine.image import _fail
    if e["family"] not in FAMILY_NO or e["proto"] not in TYPE_NO:
        _fail(f"{what}: bad inet socket family or protocol")
    if ("addr" in e) != ("port" in e) or ("peer" in e) != ("peer_port" in e):
        _fail(f"{what}: an inet address without its port")
    for key in ("addr", "peer"):
        if key in e:
            try:
                a = ipaddress.ip_address(e[key].split("%")[0])
                scope = e[key].partition("%")[2]
            except ValueError:
                _fail(f"{what}: bad inet {key} {e[key][:60]!r}")
            if a.version != (4 if e["family"] == "inet" else 6) or \
                    (scope and not (scope.isdigit() and len(scope) < 11)):
                _fail(f"{what}: inet {key} {e[key][:60]!r} is not of family {e['family']}")
            if (key == "peer" or _client(e)) and not _loopback(e[key]):
                _fail(f"{what}: a peer off loopback")
    if "listen" in e and e["proto"] != "tcp":
        _fail(f"{what}: only a TCP socket listens")
    if ("protocol" in e) != (e["proto"] == "raw") or e["proto"] == "raw" and e.get("port", 0):
        _fail(f"{what}: a raw socket, and it alone, names its protocol ('protocol'), and binds no port")
    if e.get("peer_port") == 0 and e["proto"] in ("tcp", *UDPS):
        _fail(f"{what}: a TCP or UDP peer of port 0")
    if "replies" in e:
        if e["proto"] != "ping":
            _fail(f"{what}: only a ping socket has echo replies waiting ('replies')")
        inet_ping.check(e["replies"], e["family"], e.get("port") or None, what)
    if "peer" in e and e["proto"] == "tcp" and not _client(e):
        _fail(f"{what}: a TCP socket is connected only with its connection's state ('tcp')")
    if "queued" in e and "listen" not in e:
        _fail(f"{what}: only a listener has connections waiting ('queued')")
    if _client(e):
        if e["proto"] != "tcp" or "peer" not in e or "addr" not in e or "listen" in e or \
                sum(k in e for k in ("tcp", "pending", "syn_sent")) > 1:
            _fail(f"{what}: a TCP connection ('tcp' or 'pending') or a connecting client ('syn_sent') is a TCP "
                  "socket with an address and a peer, not listening, one of the three")
    if "filter" in e and _client(e):
        _fail(f"{what}: a TCP connection has no socket filter")
    if "tcp" in e:
        inet_tcp.check(e["tcp"], what)
    if "dgrams" in e:
        if e["proto"] != "udp" or "addr" not in e:
            _fail(f"{what}: only a bound UDP socket has datagrams waiting ('dgrams')")
        inet_udp.check(e["dgrams"], e["family"], what)
    if "obj" not in e:
        _fail(f"{what}: an inet socket names its network namespace ('obj')")
    inet_opts.check(e["opts"], e["family"], e["proto"], what)


def _client(e: dict) -> bool:
    """Whether entry `e` is a TCP client that restore connects (in repair mode, or for real)."""
    return "tcp" in e or "pending" in e or "syn_sent" in e


def _check_object(obj: dict, what: str) -> None:
    from engine.image import _fail
    if set(obj) != {"kind", "lo"} or obj["lo"] not in ("up", "down"):
        _fail(f"{what}: an inet network namespace is {{kind, lo: up|down}}")


def _make(spec, fds):
    """In the stand-in (the restored network namespace): its lo up first when it was, then the
    socket with its options, bound, listening or connected as dumped."""
    if spec["lo"] == "up":
        inet_net.set_lo_up()
    fam = FAMILY_NO[spec["family"]]
    s = _new(fam, spec["proto"], spec.get("protocol"), spec.get("uid"))
    try:
        if "filter" in spec:   # (before the options: SO_LOCK_FILTER forbids it after)
            inet_filter.attach(s, spec["filter"])
        # (a connection's buffers TCP grew past [rw]mem_max need SO_*BUFFORCE, which a stand-in in a
        # user namespace may not use: the restorer sets them once the connection is made, `later`)
        inet_opts.apply(s, spec["opts"], force=not spec.get("later"))
        if "addr" in spec:
            _bind(s, _addr(fam, spec["addr"], spec["port"]), spec["opts"])
        if "listen" in spec:
            s.listen(spec["listen"])
        if "peer" in spec:
            s.connect(_addr(fam, spec["peer"], spec["peer_port"]))
        if spec.get("shutdown"):
            try:   # (on an unconnected socket the kernel sets the bits and says ENOTCONN)
                s.shutdown(spec["shutdown"] - 1)
            except OSError as e:
                if e.errno != errno.ENOTCONN:
                    raise
        return None, [s.detach()]
    finally:
        s.close()


def _new(fam: int, proto: str, protocol: int | None, uid: int | None) -> socket.socket:
    """A new socket of `proto` (a raw one's `protocol`) owned by `uid` (the dumper's name of it; the
    kernel's sk_uid is the maker's file system uid): made by a thread of ours that takes that uid for
    itself alone when it is not ours (a raw socket's raises CAP_NET_RAW again, which a nonzero uid
    clears from its effective set)."""
    typ = TYPE_NO[proto]
    num = protocol if proto == "raw" else inet_ping.PROTO_NO[FAMILIES[fam]] if proto == "ping" else \
        inet_opts.IPPROTO_UDPLITE if proto == "udplite" else 0
    return made_as(uid, lambda: socket.socket(fam, typ, num), raw=proto == "raw", ping=proto == "ping")


def made_as(uid: int | None, make, raw: bool = False, ping: bool = False) -> socket.socket:
    """make() (a new socket) by a thread of ours that takes owner `uid` (the dumper's name of it) for
    itself alone when it is not ours, with CAP_NET_RAW raised again for a `raw` (or packet) socket,
    and for a `ping` socket a gid net.ipv4.ping_group_range allows."""
    mine = None if uid is None else unix_bind._here(uid, "uid_map")
    if uid is not None and mine is None:
        raise FdError(errno.EOPNOTSUPP, f"its owner uid {uid} is not mapped in the process's user namespace")
    gids = unix_bind._map("gid_map")
    ours = any(i <= os.getegid() < i + n for i, _o, n in gids)
    # (a gid of our user namespace: ours, or, before the stand-in took its ids there, the first it maps;
    # a ping socket's maker needs one of net.ipv4.ping_group_range, which the namespace has back already)
    gid = _ping_gid(gids) if ping else os.getegid() if ours else gids[0][0]
    if (mine is None or mine == os.geteuid()) and gid == os.getegid():
        return make()

    def as_owner() -> socket.socket:
        if raw:
            from engine import kernel
            kernel.raise_effective(CAP_NET_RAW)
        return make()
    return threadids.call_as(os.geteuid() if mine is None else mine, gid, None, as_owner)


def _ping_gid(gids: list) -> int:
    """A gid of our user namespace that net.ipv4.ping_group_range of our network namespace lets make a
    ping socket: ours when it does, else the range's first that our namespace maps."""
    with open("/proc/sys/net/ipv4/ping_group_range") as fh:
        low, high = (int(x) for x in fh.read().split())
    if low <= os.getegid() <= high:
        return os.getegid()
    for inside, _o, n in gids:
        first = max(low, inside)
        if first <= min(high, inside + n - 1):
            return first
    raise FdError(errno.EACCES, f"a ping socket: net.ipv4.ping_group_range ({low} {high}) holds no group the "
                                "process's user namespace maps")


def _bind(s: socket.socket, addr: tuple, opts: dict) -> None:
    """Bind `s` to `addr`; an address the namespace does not have (bound while IP_FREEBIND was on,
    which the program turned off since) is bound with it on for the bind alone."""
    try:
        s.bind(addr)
    except OSError as e:
        if e.errno != errno.EADDRNOTAVAIL or opts.get("freebind"):
            raise
        s.setsockopt(socket.IPPROTO_IP, inet_opts.OPTS["freebind"][1], 1)
        s.bind(addr)
        s.setsockopt(socket.IPPROTO_IP, inet_opts.OPTS["freebind"][1], 0)


def _addr(fam: int, host: str, port: int) -> tuple:
    if fam == socket.AF_INET:
        return host, port
    host, _, scope = host.partition("%")
    return host, port, 0, int(scope or 0)


def _open(r: RestoreFd) -> int:
    e = r.entry
    # (a connection: the stand-in makes the socket alone, we make the connection: `_connect`)
    names = ("family", "proto", "uid", "opts") if _client(e) else \
        ("family", "proto", "protocol", "addr", "port", "listen", "peer", "peer_port", "shutdown", "uid", "opts",
         "filter")
    spec = {k: e[k] for k in names if k in e}
    spec["lo"] = r.objects[e["obj"]]["lo"]
    spec["later"] = _client(e)   # (we set its options again: `_connect`, `_connect_pending`, `_connect_syn_sent`)
    fd = None
    try:
        if _ended(e):
            fd = _prepared(r)
        else:
            fd = _make_bound(r, spec) if spec.get("port") and "addr" in spec else r.standin("make", spec)[0]
        if "tcp" in e and not _ended(e):
            _connect(r, fd)
        elif "pending" in e:
            _connect_pending(r, fd)
        elif "syn_sent" in e:
            _connect_syn_sent(r, fd)
    except OSError as err:
        if fd is not None:
            os.close(fd)
        if isinstance(err, FdError):
            raise
        what = f" {e['addr']} port {e['port']}" if "addr" in e else ""
        raise FdError(err.errno or errno.EIO, f"making the {e['family']} {e['proto']} socket{what} again: "
                                              f"{err.strerror or err}") from None
    if "dgrams" in e or "replies" in e:
        _deliver(r, fd)
    if e["flags"] & os.O_NONBLOCK:
        os.set_blocking(fd, False)
    return fd


def _ended(e: dict) -> bool:
    """Whether entry `e` is a TCP socket whose connection ended (CLOSE)."""
    return e.get("tcp", {}).get("state") == "CLOSE"


def _prepare(key: str, obj: dict, holders: list, call) -> list | None:
    """Before any fd (FdKind.prepare): the sockets of network namespace `key` whose connection ended,
    each made by a stand-in of its holders (`_make`) and by us in repair mode (inet_tcp.make), reset
    from its peer's address and let go of (inet_tcp.settle, release), its options set: its port,
    when it was no bind's, comes from its connect (inet_tcp._autobound), which takes no port a
    bind holds, a listener's. Returns our fds on them (None: none), in `_prepared`'s care."""
    made, seen = [], set()
    try:
        for e, chan in holders:
            ident = e.get("desc", id(e))   # (an fd and its dups: one socket)
            if not _ended(e) or ident in seen:
                continue
            seen.add(ident)
            spec = {**{k: e[k] for k in ("family", "proto", "uid", "opts") if k in e}, "lo": obj["lo"], "later": True}
            made.append(call(chan, "make", spec)[0])
            fam = FAMILY_NO[e["family"]]
            local, peer = _addr(fam, e["addr"], e["port"]), _addr(fam, e["peer"], e["peer_port"])
            with _borrowed(made[-1]) as s:
                inet_tcp.make(s, e["tcp"], local, peer, e["opts"].get("v6only", 0))
                ends = end_key(e["addr"], e["port"]), end_key(e["peer"], e["peer_port"])
                inet_tcp.settle(s, e["tcp"], *ends)
                inet_tcp.release(s, e["tcp"], *ends)
                inet_opts.apply(s, e["opts"])
    except OSError as err:
        for fd in made:
            os.close(fd)
        raise OSError(err.errno or errno.EIO, f"making the {e['family']} TCP socket {e['addr']} port {e['port']}, "
                                              f"whose connection ended, again: {err.strerror or err}") from None
    return made or None


def _prepared(r: RestoreFd) -> int:
    """A new fd on the socket `_prepare` made for entry r.entry (one whose connection ended): the
    first not taken yet with its ends."""
    e = r.entry
    taken = r.state.setdefault("inet ended taken", set())
    for fd in r.state.get(e["obj"]) or ():
        with _borrowed(fd) as s:
            ends = (s.family, *_name(s.getsockname()), *(peer_name(s) or ()))
        if fd not in taken and ends == (FAMILY_NO[e["family"]], e["addr"], e["port"], e["peer"], e["peer_port"]):
            taken.add(fd)
            return os.dup(fd)
    raise FdError(errno.EIO, f"{r.where}: the socket whose connection ended was not made before the fds")


def _make_bound(r: RestoreFd, spec: dict) -> int:
    """The stand-in's `make` of a bound socket. Two sockets of the tree may share a port that one
    of them no longer could bind: one with SO_REUSEPORT, one that turned it off once the other
    was bound (CRIU's socket-tcp-reuseport); the kernel lets a socket bind (and listen) beside
    another only while both have it. So when the bind meets such a socket made before, the one
    without it has it on for the bind and off again after, as the program had it."""
    e = r.entry
    made = r.state.setdefault("inet ports", {}).setdefault((e["obj"], e["proto"], e["port"]), [])
    mine = spec["opts"].get("reuseport", 0)
    try:
        fd = r.standin("make", spec)[0]
    except OSError as err:
        if err.errno != errno.EADDRINUSE or not any(bool(rp) != bool(mine) for _f, rp in made):
            raise
        if mine:
            off = [f for f, rp in made if not rp]
            _reuseport(off, 1)
            try:
                fd = r.standin("make", spec)[0]
            finally:
                _reuseport(off, 0)
        else:
            fd = r.standin("make", dict(spec, opts=dict(spec["opts"], reuseport=1)))[0]
            _reuseport([fd], 0)
    dup = os.dup(fd)
    r.keep.append(dup)   # (closed by restore once every process holds its fds)
    made.append((dup, mine))
    return fd


def _reuseport(fds: list[int], on: int) -> None:
    """SO_REUSEPORT `on` for the sockets `fds`."""
    for fd in fds:
        with _borrowed(fd) as s:
            s.setsockopt(socket.SOL_SOCKET, inet_opts.OPTS["reuseport"][1], on)


def _connect_pending(r: RestoreFd, fd: int) -> None:
    """Once every process holds its fds, in its listener's queue order: connect the client of a
    connection that waited to be accepted, send what it had sent (engine/fds/inet_pending.py), set
    its options back (SO_REUSEADDR...) and its shutdown."""
    e = r.entry
    fam = FAMILY_NO[e["family"]]
    mine = os.dup(fd)
    r.keep.append(mine)

    def connect():
        s = socket.socket(fileno=mine)
        try:
            inet_pending.connect(s, _addr(fam, e["addr"], e["port"]), _addr(fam, e["peer"], e["peer_port"]),
                                 e["pending"], e["opts"].get("v6only", 0))
            inet_opts.apply(s, e["opts"])
            if e.get("shutdown"):
                s.shutdown(e["shutdown"] - 1)
        finally:
            s.detach()
    # (after the steps without an order: the connections made in repair mode are let go first)
    r.late.append((f"the TCP client {e['addr']} port {e['port']} of a connection waiting on port {e['peer_port']}",
                   connect, e["pending"]["order"]))


def _connect_syn_sent(r: RestoreFd, fd: int) -> None:
    """Once every process holds its fds and the firewall is made (engine/restore.py: a rule may drop
    what answers the SYN): bind the client whose connect was under way to its address and port,
    connect it again without waiting (a new SYN, a new initial sequence number, which no program
    reads; it is connected when nothing drops the answer, as the first would have been), then set
    its options back."""
    e = r.entry
    fam = FAMILY_NO[e["family"]]
    mine = os.dup(fd)
    r.keep.append(mine)

    def connect():
        with _borrowed(mine) as s:
            inet_pending.connect_now(s, _addr(fam, e["addr"], e["port"]), _addr(fam, e["peer"], e["peer_port"]),
                                     e["opts"].get("v6only", 0))
            inet_opts.apply(s, e["opts"])
    # (after the clients of the connections waiting in a listener's queue, which were there first)
    r.late.append((f"the TCP client {e['addr']} port {e['port']} connecting to port {e['peer_port']}", connect,
                   inet_pending.AFTER))


def _deliver(r: RestoreFd, fd: int) -> None:
    """Once every process holds its fds: send the datagrams that waited on UDP socket `fd` again
    from their senders (engine/fds/inet_udp.py), or the echo replies that waited on ping socket `fd`
    (engine/fds/inet_ping.py), then set its receive buffer back."""
    e = r.entry
    mine = os.dup(fd)
    r.keep.append(mine)   # (closed by restore once every process holds its fds)

    def deliver():
        s = socket.socket(fileno=mine)
        try:
            if "dgrams" in e:
                inet_udp.deliver(s, e["dgrams"], e["opts"].get("rcvbuf"))
            else:
                inet_ping.deliver(s, e["family"], e["replies"], e["opts"].get("rcvbuf"))
            inet_opts.apply(s, e["opts"])
        finally:
            s.detach()
    r.late.append((f"the {'datagrams' if 'dgrams' in e else 'echo replies'} waiting on {e['proto']} port {e['port']}",
                   deliver))


def _orphan(r: RestoreFd, e: dict) -> None:
    """The peer a CLOSE_WAIT or LAST_ACK end had, an orphan its program closed (inet_tcp.orphan_of): made in
    repair mode like a connection of the tree, settled with it, let go of with it and closed at the
    end (r.keep), an orphan in FIN_WAIT2 again."""
    fam = FAMILY_NO[e["family"]]
    conn = inet_tcp.orphan_of(e["tcp"])
    fd = r.standin("make", {"family": e["family"], "proto": "tcp", "opts": {}, "lo": r.objects[e["obj"]]["lo"]})[0]
    r.keep.append(fd)
    s = socket.socket(fileno=fd)
    try:
        inet_tcp.make(s, conn, _addr(fam, e["peer"], e["peer_port"]), _addr(fam, e["addr"], e["port"]),
                      e["opts"].get("v6only", 0))
    finally:
        s.detach()
    ends = end_key(e["peer"], e["peer_port"]), end_key(e["addr"], e["port"])

    def settle():
        with _borrowed(fd) as s:
            inet_tcp.settle(s, conn, *ends)

    def release():
        with _borrowed(fd) as s:
            inet_tcp.release(s, conn, *ends)
    what = f"the orphan peer {e['peer']} port {e['peer_port']} of a TCP connection"
    r.late.append((what, settle, -3))   # (its FIN_WAIT2 first: the end's FIN comes from its address)
    r.late.append((what, release))


@contextlib.contextmanager
def _borrowed(fd: int):
    """A socket object on `fd` that leaves it open (its owner closes it)."""
    s = socket.socket(fileno=fd)
    try:
        yield s
    finally:
        s.detach()


def _connect(r: RestoreFd, fd: int) -> None:
    """Make the connection of entry r.entry on new socket `fd` (in repair mode: inet_tcp.make), and,
    once every process holds its fds (both ends exist), take it out of repair mode, send what was
    not sent, and give it back SO_REUSEADDR (repair mode clears it) and its shutdown."""
    e = r.entry
    fam = FAMILY_NO[e["family"]]
    mine = os.dup(fd)
    r.keep.append(mine)   # (closed by restore once every process holds its fds)
    s = socket.socket(fileno=mine)
    try:
        inet_tcp.make(s, e["tcp"], _addr(fam, e["addr"], e["port"]), _addr(fam, e["peer"], e["peer_port"]),
                      e["opts"].get("v6only", 0))
    finally:
        s.detach()   # (r.keep's: closed there, not by this object)

    ends = end_key(e["addr"], e["port"]), end_key(e["peer"], e["peer_port"])
    if e["tcp"].get("alone"):
        _orphan(r, e)

    def settle():
        with _borrowed(mine) as s:
            inet_tcp.settle(s, e["tcp"], *ends)
            # (its receive buffer as it was before it says its window: a wider one, `make`'s, would
            # let its peer send more than the program had let in)
            inet_opts.apply(s, {k: v for k, v in e["opts"].items() if k == "rcvbuf"})

    def release():
        with _borrowed(mine) as s:
            inet_tcp.release(s, e["tcp"], *ends)
            inet_opts.apply(s, e["opts"])
            if e.get("shutdown") and e["tcp"].get("state") != "CLOSE":   # (an ended one's: both, ENOTCONN)
                s.shutdown(e["shutdown"] - 1)
    what = f"the TCP connection from {e['addr']} port {e['port']} to {e['peer']} port {e['peer_port']}"
    # (every connection settles in repair mode before any leaves it: steps without an order run at -1)
    r.late.append((what, settle, -2))
    r.late.append((what, release))


# Never classified from a /proc link (every socket is "socket:[N]"): engine/fds/unix.py hands
# inet sockets here by their family. Its sockets are made in the process's network namespace,
# which must be one restore makes (imageformat: own_netns).
register(FdKind(name="inet", matches=lambda t, m: False, dump=dump, open=_open, check=_check,
                check_object=_check_object, standin={"make": _make}, own_netns=True, finish=_finish,
                # (an ended one is not: `_prepare` made it before any fd)
                deferred=lambda e: "tcp" in e and e["tcp"].get("state") != "CLOSE", prepare=_prepare,
                ids=lambda e: {"uid": [e["uid"]]} if "uid" in e else {},
                fields={"family": F(STR), "proto": F(STR),
                        "addr": F(STR, required=False, rule=lambda v: None if len(v) <= 64 else "is too long"),
                        "port": F(INT, required=False, rule=rng(0, 65535)),
                        "listen": F(INT, required=False, rule=rng(0, MAX_BACKLOG - 1)),
                        "peer": F(STR, required=False, rule=lambda v: None if len(v) <= 64 else "is too long"),
                        "peer_port": F(INT, required=False, rule=rng(0, 65535)),   # (a ping socket's: 0)
                        # a raw socket's protocol (IPPROTO_*: 255 IPPROTO_RAW, a sender's alone; the kernel
                        # takes any below IPPROTO_MAX, 263)
                        "protocol": F(INT, required=False, rule=rng(0, 262)),
                        # directions it was shut down in: 1 receive, 2 send, 3 both (sk_shutdown)
                        "shutdown": F(INT, required=False, rule=rng(1, 3)),
                        # its owner (sk_uid), as the dumper's user namespace names it; taken by a thread
                        # of the stand-in to make it (absent: an unbound socket sock_diag does not list)
                        "uid": F(INT, required=False, rule=rng(0, MAX_UID)),
                        "opts": F(DICT),
                        # an established connection (peer, peer_port: its other end, an fd of the tree too)
                        "tcp": inet_tcp.FIELD,
                        # the datagrams waiting on a bound UDP socket, oldest first: sent again from their senders
                        "dgrams": inet_udp.FIELD,
                        # the echo replies waiting on a ping socket, oldest first: sent again from their senders
                        "replies": inet_ping.FIELD,
                        # its classic BPF socket filter: [[code, jt, jf, k]], attached again before its options
                        "filter": inet_filter.FIELD,
                        # a listener's connections waiting to be accepted (their clients: "pending")
                        "queued": F(INT, required=False, rule=rng(1, MAX_BACKLOG)),
                        # a client whose connection waits in its listener's queue: connected again
                        "pending": inet_pending.FIELD,
                        # a client whose connect was under way (SYN_SENT): connected again, without waiting
                        "syn_sent": F(BOOL, required=False, rule=lambda v: None if v else "is true when present")}))
