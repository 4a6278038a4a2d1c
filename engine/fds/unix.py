"""Unix sockets: socket pairs (both ends, queued stream data), unbound ones, abstract names and
names bound to a path, listening or not; any other family is refused naming the fd.

Sockets are made by the stand-in of the process that holds them (so they
belong to its network namespace, where abstract names live) and handed back
to the restorer, which gives the same description to every holder. A path
name is bound again by that stand-in, after it entered its restored root,
with the dumped name; the socket file left by the dumped tree (made again
with its filesystem's files, engine/content.py) is replaced.

The socket file of a path name is found on any mount of the tree that holds
it: the name's path in the process's namespace or another namespace of the
tree (a runtime binds inside the container it builds), else a search of that
filesystem's mounts, covered ones too (through clones, beneath an
overmount). At restore the name is bound again as dumped with its file in
that directory, whatever the name leads to from the stand-in (_bind_beside, on
every kernel: before 6.15 in a private mount namespace of a child of the stand-in),
through a read-write mount of the superblock when the one found is read-only.
A socket file on a mount lazily unmounted since (the socket keeps that mount
alive) is found by the kernel itself (SIOCUNIXFILE) and bound again on that
detached mount, restored like any other (engine/detached.py). When only the
socket holds that mount, the rest of its files are out of reach and not kept
(the socket file's directories are made again).

Queued datagrams (pairs, a survivor whose peer is gone, and a named socket
other sockets sent to) are peeked with a peek offset; fds in flight with them
come with each peek and are kept as files or FIFOs on mounts of the tree, sent
again with their message at restore. A named socket's datagrams are sent again
once every process holds its fds, each from its sender: the tree's socket of
the sender's name, or a fresh unbound socket for an unbound sender.

A datagram socket connected to a named socket of the tree, and the client of
a connection its listener has not accepted yet (sock_diag's icons list them in
queue order), are made unconnected and connected again once every process
holds its fds (the restorer's late steps), through the socket file on the
restored mount by a /proc magic link, or by the abstract name. What such a
client had sent waits in the server end the kernel made for the connection,
which no fd reaches: dump's last step (`takes`, the tree is killed after)
accepts those connections and reads it, and restore sends it again from the
client once connected, for the listener's accept() to read.

Peers come from sock_diag (NETLINK_SOCK_DIAG, one dump per network
namespace, read in a child that joins it). Not done yet (refused at dump):
fds in flight on a stream or a listener, other kinds in flight, data a
pending connection's client already sent when the tree keeps running
(--leave-running: only accept() reads it), a datagram queued on a named socket
from a sender name no socket of the tree holds, a connection to a named
socket outside the tree, and a path name whose file is only on a detached mount
where the kernel lacks SIOCUNIXFILE.
"""

from __future__ import annotations

import base64
import errno
import os
import re
import socket
import stat
import struct

from engine import forkrun, kernel

from engine.imageformat import BOOL, DICT, INT, LIST, LOC, STR, F, path_rule, record
from engine.fds import FdError, FdKind, RestoreFd, register, unix_backlog, unix_ghost, unix_prestop

SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS, UDIAG_SHOW_RQLEN = 1, 2, 4, 8, 16
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS, UNIX_DIAG_RQLEN = 0, 1, 2, 3, 4
TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}
MAX_DATA = 1 << 22


def _diag_all() -> dict[int, dict]:
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
                    a += (alen + 3) & ~3
                out[ino] = rec
                off += (ln + 3) & ~3
    finally:
        s.close()


def _diag_in(pid: int) -> dict[int, dict]:
    from engine import forkrun, kernel

    def body(fd):
        kernel.setns(fd, kernel.CLONE_NEWNET)
        return _diag_all()

    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return forkrun.run(body, fd)
    finally:
        os.close(fd)


def _name(raw) -> dict:
    if isinstance(raw, bytes):
        return {"abstract": base64.b64encode(raw[1:] if raw[:1] == b"\0" else raw).decode()} if raw else {}
    if not raw:
        return {}
    return {"path": raw}


def _dump(d) -> dict:
    c = d.copy()
    with socket.socket(fileno=os.dup(c)) as s:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_NETLINK:
            from engine.fds import netlink
            return {"kind": "netlink", **netlink.dump(d, s)}   # (a kind of its own, engine/fds/netlink.py)
    out = _dump_one(d)
    st = os.stat(f"/proc/{d.pid}/fd/{d.fd}")
    out["_ino"] = f"{os.stat(f'/proc/{d.pid}/ns/net').st_ino}:{st.st_ino}"   # (for _finish, then dropped)
    return out


class _Sock:
    """One unix socket being dumped: our copy of it and what sock_diag says of it and its peer."""

    def __init__(self, d, c: int, s: socket.socket):
        self.d, self.c, self.s = d, c, s
        self.typ = refuse_family(d, s)
        self.ino = os.stat(f"/proc/{d.pid}/fd/{d.fd}").st_ino
        self.netns = os.stat(f"/proc/{d.pid}/ns/net").st_ino
        self.diag = diag_of(d, self.netns)
        self.rec = self.diag.get(self.ino, {})
        self.out = {"type": TYPES[self.typ], **_name(s.getsockname())}   # the image entry being built
        refuse_name(d, self.out)
        self.peer = self.rec.get("peer")
        self.inflight = 0

    @property
    def named(self) -> bool:
        """Bound to a path or an abstract name."""
        return "path" in self.out or "abstract" in self.out

    @property
    def mutual(self) -> bool:
        """Its peer's peer is it: one end of a pair (or of an accepted connection)."""
        return bool(self.peer) and self.diag.get(self.peer, {}).get("peer") == self.ino


def case_of(k: _Sock) -> tuple[str, object]:
    """Which case socket `k` is, asked of the stopped tree by `_dump_one` and of the running one by
    unix_prestop.precheck: ("listener", None), ("embryo", (its listener, its place in the queue)): a
    connection not accepted yet, ("dangling", None): its peer is gone, ("backlog", None): a named one
    with datagrams waiting, ("client", peer): connected to a socket that is not its pair, ("pair",
    None), or ("alone", None). Refuses fds in flight on a stream or a listener."""
    d, s = k.d, k.s
    k.inflight = int((d.info().get("scm_fds") or ["0"])[0])
    listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if k.inflight and (k.typ == socket.SOCK_STREAM or listening):
        # fds passed with SCM_RIGHTS and not received yet, on a stream (its messages are not
        # kept apart) or in a listener's pending connections.
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: {k.inflight} fds in flight (SCM_RIGHTS not yet received) "
                                        f"on a {'listening' if k.typ != socket.SOCK_STREAM else 'stream'} socket: "
                                        "not supported")
    if listening:
        return "listener", None
    embryos = d.scratch.get(("unix-embryos", k.netns))
    if embryos is None:
        embryos = d.scratch[("unix-embryos", k.netns)] = _embryos(k.diag)
    if k.ino in embryos:
        return "embryo", embryos[k.ino]
    if not k.peer and not k.named and _connected(s):
        return "dangling", None
    if not k.peer and k.named and (k.inflight or _inq(k.c)):
        return "backlog", None
    if k.peer and not k.mutual:
        return "client", k.peer
    return ("pair" if k.peer else "alone"), None


def _dump_one(d) -> dict:
    """The image entry of unix socket fd `d`, case by case (`case_of`): a listener, a connection not
    accepted yet, a socket whose peer is gone, a named one with datagrams waiting, a client of a
    named socket, or one end of a pair (refusing what restore cannot make again)."""
    c = d.copy()
    s = socket.socket(fileno=os.dup(c))
    try:
        k = _Sock(d, c, s)
        out = k.out
        if "path" in out and (not k.mutual or k.typ == socket.SOCK_DGRAM):
            _record_bound(k)   # (an accepted end's name is its listener's; a datagram pair end's its own)
        case, detail = case_of(k)
        if case == "listener":
            return _as_listener(k)
        if case == "embryo":
            # A connection its listener has not accepted yet: connected to the listener again.
            out.update(_connected_to(d, s, k.typ, detail[0], k.diag, k.netns, k.inflight))
            out["connect"]["order"] = detail[1]
            return out
        if case == "dangling":
            return _as_dangling(k)
        if not k.peer and k.typ == socket.SOCK_DGRAM and k.named and k.rec.get("state") == 1:
            # A client connected to it once (logger to /dev/log): the kernel marks it established
            # for good (/proc/net/unix shows it); restore connects a throwaway socket to it too.
            out["reached"] = True
        if case == "backlog":
            return _with_backlog(k)
        if case == "client":
            out.update(_connected_to(d, s, k.typ, detail, k.diag, k.netns, k.inflight))
            return out
        if case == "pair":
            _as_pair_end(k)
        return out
    finally:
        s.close()


def _record_bound(k: _Sock) -> None:
    """A socket bound to a path: where its file lies (the mount restore binds it on), its owner
    and mode."""
    d, out = k.d, k.out
    ghost = unix_ghost.place(d, out["path"], k.c)
    if ghost is not None:
        out.update({"bound": ghost, "unlinked": True})   # (numbered by _finish)
    else:
        out["bound"] = _writable(d, _locate(d, out["path"], k.rec.get("vfs")))
    st = _file_stat(d)
    if st is not None:
        out["owner"], out["mode"] = [st.st_uid, st.st_gid], stat.S_IMODE(st.st_mode)


def _as_listener(k: _Sock) -> dict:
    """A listening socket: its backlog, and the connections waiting to be accepted."""
    out = k.out
    out["listen"] = max(k.rec.get("wqueue", 128), 1)
    if k.rec.get("rqueue"):
        out["_pending"] = _pending(k.d, k.rec, k.diag, k.netns, k.typ)
        out["_where"] = k.d.where
    return out


def _as_dangling(k: _Sock) -> dict:
    """Its peer is gone (closed by a process that exited: podman's end of conmon's sync socket):
    restored as one end of a pair whose other end is closed at once."""
    out = k.out
    out["dangling"] = True
    refuse_dangling(k)
    if k.typ != socket.SOCK_STREAM and (k.inflight or _inq(k.c)):
        # (systemd-nspawn keeps the fd of its kmsg FIFO in flight on such a socket)
        out["msgs"] = _peek_messages(k.s, k.d, k.inflight)
        out["mnts"] = _inflight_mounts(out["msgs"])
    elif _inq(k.c):
        # (CRIU's sockets02: what the peer wrote before it closed; sent again by the peer made for it)
        out["data"] = base64.b64encode(k.s.recv(_inq(k.c), socket.MSG_PEEK | socket.MSG_DONTWAIT)).decode()
    return out


def refuse_dangling(k: _Sock) -> None:
    """Refuse a stream socket whose peer is gone with more bytes queued on it than an image keeps;
    asked before the stop too (unix_prestop)."""
    n = _inq(k.c) if k.typ == socket.SOCK_STREAM else 0
    if n > MAX_DATA:
        raise FdError(errno.EOPNOTSUPP, f"{k.d.where}: {n} bytes queued: too many")


def _with_backlog(k: _Sock) -> dict:
    """Datagrams other sockets sent to its name (a syslog or sd_notify socket's backlog): sent
    again at restore, in order, each from its sender: an unbound one from a fresh unbound
    socket, a named one from the tree's socket of that name (_finish finds it)."""
    out = k.out
    senders: list = []
    out["msgs"] = _peek_messages(k.s, k.d, k.inflight, senders)
    out["mnts"] = _inflight_mounts(out["msgs"])
    if any(senders):
        out["_senders"] = senders
        out["_where"] = k.d.where
    return out


def _as_pair_end(k: _Sock) -> None:
    """One end of a connected pair (a shared object of the image): its queued data or messages."""
    d, s, out, ino, peer = k.d, k.s, k.out, k.ino, k.peer
    a, b = sorted((ino, peer))
    obj = f"unixpair-{k.netns}-{a}-{b}"
    o = d.objects.setdefault(obj, {"kind": "unix", "type": out["type"], "data": ["", ""]})
    end = 0 if ino == a else 1
    out.update({"obj": obj, "end": end})
    if out["type"] == "dgram":
        pass   # (named or not, each end binds its own name at restore: _name_spec)
    elif "path" in out or "abstract" in out:
        # The accepted end of a connection to a listener: its name is the listener's, and the
        # other end's peer name too. Made again through a listener of that name.
        if o.get("via", {}).get("end", end) != end or _MAGIC.match(out.get("path", "")):
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: a connected socket pair whose both ends are "
                                            "named, or named through /proc: not supported")
        if any(isinstance(m, dict) for q in o.get("msgs") or () for m in q):
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: fds in flight on a connection accepted from a "
                                            "listener: not supported")
        o["via"] = {"end": end, **{key: out[key] for key in ("path", "abstract") if key in out}}
        for key in ("path", "abstract"):
            out.pop(key, None)
    if out["type"] == "stream":
        n = _inq(k.c)
        if n > MAX_DATA:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: {n} bytes queued: too many")
        if n:
            data = s.recv(n, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            d.objects[obj]["data"][end] = base64.b64encode(data).decode()
    elif _inq(k.c) or k.inflight:
        o.setdefault("msgs", [[], []])[end] = _peek_messages(s, d, k.inflight)
        if k.inflight and "via" in o:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: fds in flight on a connection accepted from a "
                                            "listener: not supported")
    if "msgs" in o:
        # (the mounts of the files in flight on either end: restore opens them)
        out["mnts"] = _inflight_mounts([m for q in o["msgs"] for m in q])


def refuse_family(d, s: socket.socket) -> int:
    """Refuse socket `s` (our copy of fd d.fd) of another family than unix, or of a type restore does
    not make; returns its type. (Netlink sockets are engine/fds/netlink.py's.)"""
    fam = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if fam != socket.AF_UNIX:
        what = {socket.AF_INET: "inet", socket.AF_INET6: "inet6",
                socket.AF_PACKET: "packet"}.get(fam, f"family {fam}")
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: {what} sockets are not supported (only unix and netlink "
                                        "sockets)")
    if typ not in TYPES:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: unix socket of type {typ} is not supported")
    return typ


def refuse_name(d, name: dict) -> None:
    """Refuse a socket bound to a path that is not a normalised name (`name`: from _name): one with
    '.', '..' or '//', which restore's validator would refuse in the image."""
    if "path" in name:
        from engine.image import ImageError
        try:
            _check_name(name["path"], "name")
        except ImageError:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: bound to {name['path']!r}, not a normalised name "
                                            "(the only names the image keeps): not supported") from None


def diag_of(d, netns: int) -> dict[int, dict]:
    """sock_diag's unix sockets of network namespace `netns` (d's process is in it), read once a dump."""
    diag = d.scratch.get(("unix", netns))
    if diag is None:
        diag = d.scratch[("unix", netns)] = _diag_in(d.pid)
    return diag


def _embryos(diag: dict) -> dict[int, tuple[int, int]]:
    """{inode of the client of a connection not accepted yet: (its listener's inode, its place in the
    queue)} (a listener's UNIX_DIAG_ICONS name the clients)."""
    out = {}
    for ino, rec in diag.items():
        for i, e in enumerate(rec.get("icons") or ()):
            out[e] = (ino, i)
    return out


def _pending(d, rec: dict, diag: dict, netns: int, typ: int) -> list[str]:
    """The clients ("netns:inode") of a listener's pending connections, which restore connects again
    in queue order; refused where that cannot be exact (a client gone, the queue not what sock_diag
    lists). Data a client sent already waits in the server end the kernel made for the
    connection, which no fd reaches before accept(): a step dump runs last (`takes`) accepts the
    connections up to the last such one and reads it, for restore to send again from the client
    once connected; with --leave-running (no `takes`) that is refused."""
    out, last = pending_clients(d, rec, diag, netns)
    if last >= 0:
        takes = d.scratch.get("takes")
        if takes is None:
            refuse_pending_data(d)
        lst = os.dup(d.copy())
        takes.append(lambda doc: unix_backlog.take_pending(lst, out[: last + 1], typ, doc, d.where))
    return out


def pending_clients(d, rec: dict, diag: dict, netns: int) -> tuple[list[str], int]:
    """(The clients ("netns:inode") of listener d's pending connections in queue order, the place of
    the last one on which data waits or -1), refusing where that cannot be exact (a client gone,
    the queue not what sock_diag lists); asked before the stop too (unix_prestop)."""
    icons = rec.get("icons") or []
    if len(icons) != rec.get("rqueue"):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: listening unix socket with {rec.get('rqueue')} connections not "
                                        f"yet accepted, {len(icons)} of them listed: not supported")
    # (sock_diag names each pending connection by its client's inode, the server end having none
    # yet; what the client sent is still charged to the client's send buffer, its wqueue)
    out = []
    last = -1
    for i, client in enumerate(icons):
        if client not in diag:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: listening unix socket with a connection not yet accepted "
                                            "whose client is gone: not supported")
        if diag[client].get("wqueue"):
            last = i
        out.append(f"{netns}:{client}")
    return out, last


def refuse_pending_data(d) -> None:
    """Refuse listener d: data waits on a connection it has not accepted, and the tree keeps running."""
    raise FdError(errno.EOPNOTSUPP, f"{d.where}: listening unix socket with a connection not yet accepted on "
                                    "which data already waits: only accept() reads it, which takes the "
                                    "connection from the tree; not supported with --leave-running")


def _connected_to(d, s: socket.socket, typ: int, peer: int, diag: dict, netns: int, inflight: int) -> dict:
    """A socket connected to one that is not its pair: a datagram socket connected to a named
    datagram socket (a client of /run/systemd/notify or /dev/log). Kept as `connect` (the name, and
    for a path the mount and path of its socket file), connected again at restore once every
    process holds its fds; the named socket must be one of the tree's (finish checks it)."""
    what = f"{d.where}: unix socket connected to a socket that is not its pair"
    name = peer_name(d, s, typ, peer, diag, inflight)
    if "path" in name:
        try:
            loc = _locate(d, name["path"], diag.get(peer, {}).get("vfs"))
        except FdError as e:
            # Its file may be a ghost's (unlinked): _finish connects to that socket by its id then.
            return {"connect": name, "_ghost_peer": (f"{netns}:{peer}", e.strerror), "_peer": f"{netns}:{peer}",
                    "_where": d.where}
        if loc.get("detached"):
            raise FdError(errno.EOPNOTSUPP, f"{what}: the socket file of {name['path']} is on a detached mount: "
                                            "not supported")
        name = {**name, "mnt": loc["mnt"], "at": loc["path"]}
    return {"connect": name, "_peer": f"{netns}:{peer}", "_where": d.where}


def peer_name(d, s: socket.socket, typ: int, peer: int, diag: dict, inflight: int) -> dict:
    """The name of the socket `peer` that socket fd `d` is connected to, not its pair (`_connected_to`),
    refusing what restore cannot connect again (a stream to no listener, datagrams queued, a peer
    with no name); asked before the stop too (unix_prestop)."""
    what = f"{d.where}: unix socket connected to a socket that is not its pair"
    listener = diag.get(peer, {}).get("icons") is not None or diag.get(peer, {}).get("state") == 10   # TCP_LISTEN
    if typ != socket.SOCK_DGRAM and not listener:
        raise FdError(errno.EOPNOTSUPP, f"{what}: not supported")
    if inflight or _inq(d.copy()):
        raise FdError(errno.EOPNOTSUPP, f"{what}: datagrams queued on it: not supported")
    name = _name(s.getpeername())
    # (a relative name, CRIU's sk-unix-listen01, is connected to again through the file it found)
    if not name or _MAGIC.match(name.get("path", "")):
        raise FdError(errno.EOPNOTSUPP, f"{what}, and that one has no name to connect to again "
                                        f"({name or 'unnamed'}): not supported")
    return name


def _finish(objects: dict, entries: list[dict]) -> None:
    """Refuse a socket connected to a named socket that no process of the tree holds (restore would
    connect to whatever has that name then), and drop the dump's own bookkeeping fields."""
    unix = [e for e in entries if e.get("kind") == "unix" and "_ino" in e]
    unix_backlog.name_senders(unix)
    unix_ghost.number(unix)
    refuse_outside(unix)
    for e in entries:
        for key in ("_ino", "_pending", "_peer", "_where"):
            e.pop(key, None)


def refuse_outside(unix: list[dict]) -> None:
    """Refuse, among the tree's unix socket entries `unix` (each with its "_ino"), a pending
    connection (`_pending`) or a connection (`_peer`, `connect`) to a socket no process of the tree
    holds; asked of the running tree too (unix_prestop.prefinish)."""
    have = {e["_ino"] for e in unix}
    for e in unix:
        for client in e.get("_pending") or ():
            if client not in have:
                raise FdError(errno.EOPNOTSUPP, f"{e.get('_where')}: listening unix socket with a connection not "
                                                "yet accepted whose client no process of the tree holds: not supported")
    for e in unix:
        if e.get("_peer") and e["_peer"] not in have:
            c = e["connect"]
            target = c.get("path") or "@" + base64.b64decode(c["abstract"]).decode(errors="replace")
            raise FdError(errno.EOPNOTSUPP, f"{e.get('_where')}: connected to {target}, a socket no process of the "
                                            "tree holds: not supported")


_MAGIC = re.compile(r"^/proc/(?:self|thread-self|[0-9]+)/fd/([0-9]+)/([^/]+)$")
MAX_WALK = 100_000


def _locate(d, name: str, vfs) -> dict:
    """{mnt, path} of the socket file a path-bound socket made (its name may be relative, or go
    through /proc/self/fd/N/, as conmon binds its attach socket): the name when it leads to the
    socket's inode (sock_diag's VFS dev and ino), else a bounded search of the visible mounts of
    that filesystem; first in the process's mount namespace, then in the tree's others (a
    runtime binds a socket inside the container it builds: systemd-nspawn's /run/host/notify)."""
    if vfs is None:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: bound to {name}, but its socket file is gone: not supported")
    ino, kdev = vfs
    dev = os.makedev(kdev >> 20, kdev & 0xFFFFF)
    spaces = [(d.pid, d.mounts)] + list(d.elsewhere)
    detached = _on_detached(d, known_mounts(d))
    if detached is not None:
        return detached
    if name.startswith("/") and not _MAGIC.match(name):
        for pid, _mounts in spaces:
            root = f"/proc/{pid}/root"
            try:
                st = os.stat(root + name, follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode) and (st.st_ino, st.st_dev) == (ino, dev):
                    return d.place(name, kernel.statx_mnt_id(root + name, flags=kernel.AT_SYMLINK_NOFOLLOW),
                                   "socket")
            except OSError:
                pass
    budget = [MAX_WALK]
    want = f"{os.major(dev)}:{os.minor(dev)}"
    covered = []
    for pid, mounts in spaces:
        root = f"/proc/{pid}/root"
        hidden = []
        for m in sorted((m for m in mounts if m.dev == want), key=lambda m: (len(m.mountpoint), m.mnt_id)):
            top = root + ("" if m.mountpoint == "/" else m.mountpoint)
            try:
                visible = kernel.statx_mnt_id(top) == m.mnt_id   # (following /proc/PID/root itself)
            except OSError:
                visible = False
            if not visible:
                hidden.append(m.mnt_id)
                continue
            found = _search(d, name, top, m, dev, ino, budget)
            if found is not None:
                return found
        if hidden:
            covered.append((pid, mounts, hidden))
    # Beneath an overmount: the covered mounts of that filesystem, cloned where their covers are
    # gone (in a private copy of the namespace, as dump reaches any covered mount).
    for pid, mounts, hidden in covered:
        found = _search_clones(d, name, pid, mounts, hidden, dev, ino, budget)
        if found is not None:
            return found
    raise FdError(errno.EOPNOTSUPP, f"{d.where}: bound to {name}: its socket file is on no mount of the tree "
                                    "(a detached mount): not supported")


SIOCUNIXFILE = 0x89E0   # SIOCPROTOPRIVATE: an O_PATH fd on a bound socket's file (what CRIU uses)


def known_mounts(d) -> set[int]:
    """The ids of the mounts of the tree's namespaces, as fd `d` sees them (its own and `elsewhere`)."""
    return {m.mnt_id for _pid, mounts in [(d.pid, d.mounts)] + list(d.elsewhere) for m in mounts}


def _on_detached(d, known: set[int]) -> dict | None:
    """The socket file's place when it lies on a mount in no namespace of the tree (bound on a mount
    that was lazily unmounted since: the socket keeps that mount alive), else None. The kernel hands
    us the file itself (SIOCUNIXFILE), on its very mount; our fd on it stays open for dump's plan of
    detached mounts (FdTable.unplaced). Without SIOCUNIXFILE: None (the search refuses such a file)."""
    import fcntl
    try:
        f = fcntl.ioctl(d.copy(), SIOCUNIXFILE)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.ENOENT):
            return None
        raise
    keep = False
    try:
        with open(f"/proc/self/fdinfo/{f}") as info:
            mnt = next(int(line.split()[1]) for line in info if line.startswith("mnt_id:"))
        if mnt in known:
            return None
        loc = d.place(os.readlink(f"/proc/self/fd/{f}"), mnt, "socket")
        if not loc.get("detached"):
            return None
        d.scratch.setdefault("unplaced", []).append((loc, os.getpid(), f"fd/{f}"))
        keep = True
        return loc
    finally:
        if not keep:
            os.close(f)


def _file_stat(d) -> os.stat_result | None:
    """The stat of the socket's file (its owner as this, the initial, user namespace sees it), by the
    file the kernel hands us (SIOCUNIXFILE); None without it. Restore binds as that owner: the socket
    file is the same user's again, and a filesystem of a user namespace takes no file from an id it
    does not map (bind: EOVERFLOW); then gives it the same mode (bind's follows the umask)."""
    import fcntl
    try:
        f = fcntl.ioctl(d.copy(), SIOCUNIXFILE)
    except OSError:
        return None
    try:
        return os.fstat(f)
    finally:
        os.close(f)


def _here(kid: int, map_name: str, proc: int = -1) -> int | None:
    """The id that outside id `kid` is in our user namespace (its map /proc/self/`map_name`, read
    from inside: relative to its parent, the initial namespace for a first-level one), or None when
    unmapped. `proc`: an fd on /proc, where our "/" has none (the restorer's yard)."""
    path = f"/proc/self/{map_name}" if proc < 0 else f"self/{map_name}"
    with open(os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=None if proc < 0 else proc)) as f:
        for line in f:
            inside, outside, count = (int(x) for x in line.split())
            if outside <= kid < outside + count:
                return inside + kid - outside
    return None


def _bind_ids(spec: dict, proc: int = -1) -> tuple[int, int] | None:
    """The file system ids to make `spec`'s socket file with: its dumped owner, as our user namespace
    names it; None (our own) when there is none, it is ours, or we cannot name it. `proc`: as _here's."""
    owner = spec.get("owner")
    if not owner:
        return None
    ids = _here(owner[0], "uid_map", proc), _here(owner[1], "gid_map", proc)
    if None in ids or ids == (os.geteuid(), os.getegid()):
        return None
    return ids


def _as(ids: tuple[int, int] | None, fn, *args) -> None:
    """fn(*args), by a child with file system ids `ids` when they are given (they would stay with
    the stand-in, and SECBIT_NO_SETUID_FIXUP with them)."""
    if ids is None:
        fn(*args)
        return

    def body():
        kernel.fs_ids_keeping_caps(*ids)
        fn(*args)

    forkrun.run(body)


def _mapped(ids: tuple[int, int] | None, where, fn, *args) -> None:
    """fn(*args) (which makes a file in directory `where`, an fd or a path) with file system ids
    `ids`, or our own; where the filesystem's user namespace does not map those (EOVERFLOW: a
    tmpfs mounted inside a user namespace, our ids the restorer's), again as the directory's owner."""
    try:
        _as(ids, fn, *args)
    except OSError as e:
        if e.errno != errno.EOVERFLOW:
            raise
        st = os.fstat(where) if isinstance(where, int) else os.stat(where)
        if (st.st_uid, st.st_gid) == ids:
            raise
        _as((st.st_uid, st.st_gid), fn, *args)


def _writable(d, loc: dict) -> dict:
    """The socket file's directory through a read-write mount of its superblock, where the mount
    it was found on is read-only (systemd-nspawn binds /run/host/notify, then makes /run/host a
    read-only bind): restore binds the socket again where a bind can create its file. The inode
    is the superblock's, so any mount that reaches the directory gives the same socket file."""
    from engine.image import is_beneath, rel_to
    every = [m for _pid, mounts in [(d.pid, d.mounts)] + list(d.elsewhere) for m in mounts]
    here = next((m for m in every if m.mnt_id == loc.get("mnt")), None)
    if here is None or not here.readonly or "ro" in here.super_opts or loc.get("detached"):
        return loc
    full = here.root.rstrip("/") + loc["path"]
    for m in every:
        if m.dev == here.dev and not m.readonly and "deleted" not in m.root and is_beneath(full, m.root):
            return {**loc, "mnt": m.mnt_id, "path": "/" + rel_to(full, m.root)}
    return loc


def _search_clones(d, name: str, pid: int, mounts, hidden: list[int], dev: int, ino: int, budget: list):
    from engine import channel
    from engine.nscopy import clone_mounts
    by_id = {m.mnt_id: m for m in mounts}
    found = None
    nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for mids, fds in channel.fork_stream(clone_mounts, nsfd, [pid], hidden, mounts):
            try:
                for mid, mfd in zip(mids, fds):
                    if found is None:
                        found = _search(d, name, f"/proc/self/fd/{mfd}", by_id[mid], dev, ino, budget)
            finally:
                for x in fds:
                    os.close(x)
    finally:
        os.close(nsfd)
    return found


def _search(d, name: str, top: str, m, dev: int, ino: int, budget: list) -> dict | None:
    """Search mount `m`, reached at path `top`, for socket inode `ino` of device `dev`."""
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        budget[0] -= len(entries)
        if budget[0] < 0:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: socket file of {name} not found within {MAX_WALK} "
                                            "entries: not supported")
        for ent in entries:
            try:
                st = ent.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev:
                continue   # another mount (its own filesystem is searched as its own mount)
            if stat.S_ISDIR(st.st_mode):
                stack.append(ent.path)
            elif stat.S_ISSOCK(st.st_mode) and st.st_ino == ino:
                rel = ent.path[len(top):]
                return d.place(rel if m.mountpoint == "/" else m.mountpoint + rel, m.mnt_id, "socket")
    return None


SO_PEEK_OFF = 42
MAX_MSGS = 4096


def _peek_messages(s: socket.socket, d, inflight: int, senders: list | None = None) -> list:
    """The messages queued on a datagram or seqpacket socket, in order and with their bounds, read
    without consuming them: with a peek offset (SO_PEEK_OFF) each MSG_PEEK returns the next one
    (the socket's own peek offset is put back). Each is its data (base64), or {data, fds} when it
    carries fds (SCM_RIGHTS, `inflight` of them in all): a peek hands us copies of those, each
    described as an fd on a file of the tree's mounts (_inflight_entry). With `senders`, the
    sender's name of each message is appended to it ({} for an unbound sender)."""
    saved = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    out: list = []
    total = nfds = 0
    try:
        while True:
            try:
                data, anc, flags, _addr = s.recvmsg(1 << 17, socket.CMSG_SPACE(253 * 4),
                                                    socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                break
            got = [fd for level, kind, raw in anc if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for fd in struct.unpack(f"{len(raw) // 4}i", raw[: len(raw) - len(raw) % 4])]
            try:
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or any(
                        level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS for level, kind, _ in anc):
                    raise FdError(errno.EOPNOTSUPP, f"{d.where}: a queued message over 128 KiB, or with other "
                                                    "ancillary data than fds: not supported")
                msg = base64.b64encode(data).decode()
                if got:
                    msg = {"data": msg, "fds": [_inflight_entry(d, fd) for fd in got]}
                out.append(msg)
                if senders is not None:
                    senders.append(_name(_addr))
            finally:
                for fd in got:
                    os.close(fd)
            nfds += len(got)
            total += len(data)
            if not data:
                # The peek offset cannot step over an empty message: it must be the queue's last
                # one, which it is when it brings the count of fds in flight to the kernel's.
                if got and nfds == inflight:
                    break
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: an empty message queued before others: not supported")
            if len(out) > MAX_MSGS or total > MAX_DATA:
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: more than {MAX_MSGS} messages or {MAX_DATA} bytes "
                                                "queued: too many")
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, saved)
    if nfds != inflight:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: {inflight} fds in flight, {nfds} found in its queue")
    return out


INFLIGHT_KINDS = ("file", "fifo")


def _inflight_entry(d, fd: int) -> dict:
    """An fd in flight (our copy `fd`) as an fd entry of a placed kind (a file or a FIFO): on the mount
    its fdinfo names, or, for a file deleted since, on the mount of the tree whose root it is (the
    FIFO systemd-nspawn binds over /proc/kmsg)."""
    from engine import fds as kinds
    target = os.readlink(f"/proc/self/fd/{fd}")
    st = os.fstat(fd)
    kind = kinds.classify(target, st.st_mode)
    what = f"{d.where}: an fd in flight ({target})"
    if kind is None or kind.name not in INFLIGHT_KINDS:
        raise FdError(errno.EOPNOTSUPP, f"{what}: only files and FIFOs in flight are supported")
    info = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    entry = {"kind": kind.name, "flags": int(info["flags"], 8) & ~os.O_CLOEXEC, "pos": int(info["pos"])}
    if kind.name == "file":
        entry["type"] = "dir" if stat.S_ISDIR(st.st_mode) else "file"
    else:
        # Its pipe with the data it holds: an fd in flight may be all that keeps a FIFO's data.
        from engine.fds.pipe import fifo_object
        entry["obj"] = fifo_object(d.objects, f"/proc/self/fd/{fd}")
    spaces = [(d.pid, d.mounts)] + list(d.elsewhere)
    mnt = int(info.get("mnt_id", 0))
    known = {m.mnt_id for _pid, mounts in spaces for m in mounts}
    if not target.endswith(" (deleted)") and mnt in known:
        loc = d.place(target, mnt, "fd in flight")
    else:
        loc = None
        for pid, mounts in spaces:
            for m in mounts:
                try:
                    mst = os.stat(f"/proc/{pid}/root{m.mountpoint}", follow_symlinks=False)
                    here = kernel.statx_mnt_id(f"/proc/{pid}/root{m.mountpoint}", flags=kernel.AT_SYMLINK_NOFOLLOW)
                except OSError:
                    continue
                if (mst.st_dev, mst.st_ino) == (st.st_dev, st.st_ino) and here == m.mnt_id:
                    loc = {"mnt": m.mnt_id, "path": "/"}
                    break
            if loc is not None:
                break
        if loc is None:
            raise FdError(errno.EOPNOTSUPP, f"{what}: on no mount of the tree: not supported")
    if loc.get("detached"):
        raise FdError(errno.EOPNOTSUPP, f"{what}: on a detached mount: not supported")
    entry.update({"mnt": loc["mnt"], "path": loc["path"]})
    return entry


def _inflight_mounts(msgs: list) -> list[int]:
    return sorted({f["mnt"] for m in msgs if isinstance(m, dict) for f in m["fds"]})


def _connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def _inq(fd: int) -> int:
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _name_rule(v) -> str | None:
    """imageformat rule of a socket's path name: see _check_name."""
    return path_rule("/" + v if isinstance(v, str) and v and not v.startswith("/") else v)


def _check_name(name, what: str) -> None:
    """A socket's path name as bind() got it: a normalised absolute path, or a relative one
    (sockname shows it as given: CRIU's sk-unix-rel) without '.', '..' or empty components."""
    from engine.image import _fail, check_abs_path
    if isinstance(name, str) and name and not name.startswith("/"):
        check_abs_path("/" + name, what)
    else:
        check_abs_path(name, what)


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail, check_abs_path
    if entry.get("type") not in TYPES.values():
        _fail(f"{what}: bad unix socket type")
    if "path" in entry:
        _check_name(entry["path"], what)
        if len(entry["path"]) > 107:
            _fail(f"{what}: socket path too long")
        if not isinstance(entry.get("bound"), dict):
            _fail(f"{what}: a path-bound socket needs the mount of its file ('bound')")
    if "unlinked" in entry and (not isinstance(entry["unlinked"], str)
                                or not unix_ghost.GHOST_ID.match(entry["unlinked"])
                                or "path" not in entry or _MAGIC.match(entry["path"]) or "dangling" in entry):
        _fail(f"{what}: bad ghost socket id, or a ghost that is not a path-bound socket")
    if "listen" in entry and (not isinstance(entry["listen"], int) or not 0 < entry["listen"] < 1 << 20):
        _fail(f"{what}: bad backlog")
    c = entry.get("connect")
    if c is not None:
        if "obj" in entry or "listen" in entry or (entry.get("type") == "dgram") == ("order" in c):
            _fail(f"{what}: only a lone datagram socket, or a pending connection (with its 'order'), is connected "
                  "to a named socket")
        if "order" in c:
            if type(c["order"]) is not int or not 0 <= c["order"] < 1 << 20:
                _fail(f"{what}: bad order of a pending connection")
            c = {k: v for k, v in c.items() if k != "order"}
        if set(c) == {"abstract"}:
            if not isinstance(c["abstract"], str) or len(c["abstract"]) > 148:
                _fail(f"{what}: bad abstract name to connect to")
        elif set(c) == {"path", "to"}:
            _check_name(c["path"], what)
            if len(c["path"]) > 107 or not isinstance(c["to"], str) or not unix_ghost.GHOST_ID.match(c["to"]):
                _fail(f"{what}: bad ghost socket to connect to")
        elif set(c) == {"path", "mnt", "at"}:
            _check_name(c["path"], what)
            check_abs_path(c["at"], what)
            if len(c["path"]) > 107 or _MAGIC.match(c["path"]) or type(c["mnt"]) is not int:
                _fail(f"{what}: bad socket path to connect to")
        else:
            _fail(f"{what}: 'connect' needs an abstract name, or a path with the mount and path of its socket file")
    if entry.get("reached") and (entry.get("type") != "dgram" or ("path" not in entry and "abstract" not in entry)
                                 or {"obj", "dangling", "listen"} & set(entry)):
        _fail(f"{what}: only a named datagram socket is marked reached")
    sent = entry.get("sent")
    if sent is not None:
        stream = entry.get("type") == "stream"
        if "order" not in (entry.get("connect") or {}) or (stream and not isinstance(sent, str)) \
                or (not stream and (not isinstance(sent, list) or len(sent) > MAX_MSGS)) \
                or not all(isinstance(m, str) and 0 < len(m) <= MAX_DATA * 4 // 3 + 4
                           for m in ([sent] if stream else sent)):
            _fail(f"{what}: bad data sent on a connection not yet accepted")
    if "obj" in entry and entry.get("end") not in (0, 1):
        _fail(f"{what}: bad socket pair end")
    if "data" in entry and (not entry.get("dangling") or entry.get("type") != "stream"
                            or len(entry["data"]) > MAX_DATA * 4 // 3 + 4):
        _fail(f"{what}: stream data queued only on a stream socket whose peer is gone")
    if "obj" in entry and ("path" in entry or "abstract" in entry) and entry.get("type") != "dgram":
        _fail(f"{what}: only a datagram pair end is bound to a name of its own")
    if "msgs" in entry:
        named = ("path" in entry or "abstract" in entry) and entry.get("type") == "dgram" \
            and not {"dangling", "listen", "connect", "obj"} & set(entry)
        if not named and (not entry.get("dangling") or entry.get("type") == "stream"):
            _fail(f"{what}: queued messages on a socket that is neither the survivor of a pair nor a named "
                  "datagram socket")
        _check_msgs(entry["msgs"], what)
        senders = entry.get("senders")
        if senders is not None and (not named or not isinstance(senders, list)
                                    or len(senders) != len(entry["msgs"])
                                    or not all(x is None or (isinstance(x, str) and unix_backlog.SENDER_ID.match(x))
                                               for x in senders)):
            _fail(f"{what}: bad senders of queued datagrams")
    elif "senders" in entry:
        _fail(f"{what}: senders without queued datagrams")
    sid = entry.get("sender_id")
    if sid is not None and (entry.get("type") != "dgram" or not isinstance(sid, str)
                            or not unix_backlog.SENDER_ID.match(sid)):
        _fail(f"{what}: bad sender id")
    if "mnts" in entry and (not all(type(x) is int for x in entry["mnts"]) or len(entry["mnts"]) > 253 * MAX_MSGS):
        _fail(f"{what}: bad mounts of fds in flight")


def _check_msgs(queue, what: str) -> None:
    """A queue of messages: base64 data each, or {data, fds: [fd entries of a file or FIFO]}."""
    from engine.image import _fail, check_abs_path
    if not isinstance(queue, list) or len(queue) > MAX_MSGS:
        _fail(f"{what}: bad queued messages")
    for m in queue:
        data, fds = (m.get("data"), m.get("fds")) if isinstance(m, dict) else (m, None)
        if not isinstance(data, str) or len(data) > (1 << 17) * 4 // 3 + 4 or (not data and not fds):
            _fail(f"{what}: bad queued message")
        if isinstance(m, dict):
            if set(m) != {"data", "fds"} or not isinstance(fds, list) or not 0 < len(fds) <= 253:
                _fail(f"{what}: bad fds of a queued message")
            for f in fds:
                if not isinstance(f, dict) or f.get("kind") not in INFLIGHT_KINDS \
                        or not set(f) <= {"kind", "flags", "pos", "mnt", "path", "type", "obj"} \
                        or ("obj" in f and (f["kind"] != "fifo" or not isinstance(f["obj"], str))) \
                        or type(f.get("flags")) is not int or not 0 <= f["flags"] < 1 << 22 \
                        or type(f.get("pos")) is not int or not 0 <= f["pos"] < 1 << 63 \
                        or type(f.get("mnt")) is not int or f.get("type", "file") not in ("file", "dir"):
                    _fail(f"{what}: bad fd in flight")
                check_abs_path(f.get("path"), what)


def _check_object(obj: dict, what: str) -> None:
    from engine.image import _fail, check_abs_path
    if obj.get("type") not in TYPES.values() or not isinstance(obj.get("data"), list) or len(obj["data"]) != 2 \
            or not all(isinstance(x, str) and len(x) <= MAX_DATA * 4 // 3 + 4 for x in obj["data"]):
        _fail(f"{what}: bad unix socket pair")
    msgs = obj.get("msgs")
    if msgs is not None:
        if obj["type"] == "stream" or not isinstance(msgs, list) or len(msgs) != 2:
            _fail(f"{what}: bad queued messages of a socket pair")
        for q in msgs:
            _check_msgs(q, what)
    via = obj.get("via")
    if via is not None:
        if not isinstance(via, dict) or via.get("end") not in (0, 1) or ("path" in via) == ("abstract" in via):
            _fail(f"{what}: bad listener name of a socket pair")
        if "path" in via:
            _check_name(via["path"], what)
            if len(via["path"]) > 107 or _MAGIC.match(via["path"]):
                _fail(f"{what}: bad listener path of a socket pair")
        elif not isinstance(via["abstract"], str) or len(via["abstract"]) > 148:
            _fail(f"{what}: bad abstract listener name of a socket pair")


_TYPE_NO = {v: k for k, v in TYPES.items()}


def _make(args, fds):
    """In the stand-in: a socket (or a pair) of its network namespace, bound and listening as dumped."""
    spec = args
    if spec.get("dangling"):
        a, b = socket.socketpair(socket.AF_UNIX, _TYPE_NO[spec["type"]])
        _send_queue(b, spec.get("msgs") or (), fds)   # its queue, sent by the peer that goes at once
        if spec.get("data"):
            b.sendall(base64.b64decode(spec["data"]))
        b.close()
        return None, [a.detach()]
    if spec.get("pair"):
        a, b = socket.socketpair(socket.AF_UNIX, _TYPE_NO[spec["type"]])
        out = [a.detach(), b.detach()]
        for end, data in enumerate(spec.get("data") or ()):
            if data:
                os.write(out[1 - end], base64.b64decode(data))   # what `end` will read, sent by its peer
        rest = list(fds)
        for end, queue in enumerate(spec.get("msgs") or ()):
            with socket.socket(fileno=os.dup(out[1 - end])) as peer:
                rest = _send_queue(peer, queue, rest)
        return None, out
    s = socket.socket(socket.AF_UNIX, _TYPE_NO[spec["type"]])
    try:
        if "abstract" in spec:
            s.bind(b"\0" + base64.b64decode(spec["abstract"]))
        elif "path" in spec:
            if _MAGIC.match(spec["path"]):
                import fcntl
                hi = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 1024)   # off any fd number N it names
                s.close()
                s = socket.socket(fileno=hi)
            _bind_path(s, spec, fds)
        if "listen" in spec:
            s.listen(spec["listen"])
        return None, [s.detach()]
    finally:
        s.close()


def _send_queue(peer: socket.socket, queue, fds: list[int]) -> list[int]:
    """Send `queue` (dumped messages) from `peer`, one message a send; the fds in flight are taken
    from the front of `fds` (received ones, which the stand-in closes). Returns the fds left."""
    fds = list(fds)
    for m in queue:
        if isinstance(m, dict):
            n = len(m["fds"])
            mine, fds = fds[:n], fds[n:]
            if len(mine) != n:
                raise FdError(errno.EINVAL, "fewer fds in flight received than the queue carries")
            socket.send_fds(peer, [base64.b64decode(m["data"])], mine)
        else:
            peer.send(base64.b64decode(m))
    return fds


def _bind_path(s: socket.socket, spec: dict, fds: list[int]) -> None:
    """Bind to the dumped name, the socket file landing in the directory received (fds[0]).

    A name through /proc/self/fd/N/ is bound the same way, with that directory at N for the
    call; any other name is bound as it reads, from the stand-in's restored root."""
    name, d = spec["path"], fds[0] if fds else None
    ids = _bind_ids(spec)
    if d is not None:
        try:
            if stat.S_ISSOCK(os.lstat(spec["base"], dir_fd=d).st_mode):
                os.unlink(spec["base"], dir_fd=d)   # the dumped socket's node: bind makes a new one
        except FileNotFoundError:
            pass
    m = _MAGIC.match(name)
    if m is None and d is not None and _bind_beside(s, d, name, ids):
        _chmod(spec, d)
        return
    if spec.get("ghost"):
        raise FdError(errno.EOPNOTSUPP, f"{name}: a deleted socket file is bound again aside, which a name with "
                                        "'.' or '..' components cannot be")
    if m is None or d is None:
        _mapped(ids, d if d is not None else os.path.dirname(name) or ".", s.bind, name)
        _chmod(spec, d)
        return
    n = int(m[1])
    import fcntl
    # Whatever the stand-in holds at N (its channel, maybe) steps aside for the call: it is
    # single-threaded, and N holds the same description again right after.
    try:
        saved = fcntl.fcntl(n, fcntl.F_DUPFD_CLOEXEC, 1024)
    except OSError as e:
        if e.errno != errno.EBADF:
            raise
        saved = None
    cloexec = saved is not None and not os.get_inheritable(n)
    os.dup2(d, n)
    try:
        _mapped(ids, d, s.bind, name)
        _chmod(spec, d)
    finally:
        if saved is None:
            os.close(n)
        else:
            os.dup2(saved, n, inheritable=not cloexec)
            os.close(saved)


def _chmod(spec: dict, d: int | None) -> None:
    """Give the socket file just bound in directory `d` its dumped mode."""
    if "mode" in spec and d is not None:
        os.chmod(spec["base"], spec["mode"], dir_fd=d)


def _bind_beside(s: socket.socket, d: int, name: str, ids: tuple[int, int] | None = None) -> bool:
    """Bind `s` to `name` with its socket file in directory `d`, wherever `name` leads from here
    (the file may lie beneath an overmount, on a detached mount, or in another mount namespace of
    the tree). A forked child chroots to a detached tmpfs where `name`'s directory is a symlink
    to `d` through a procfs of its own (/P/self/fd/D), and binds there: the name is the dumped
    one, the file lands in `d`. Before Linux 6.15 (no mounts on a detached mount: strategy
    sources=yard) that tmpfs is attached first, in a private mount namespace of the child
    (_attach_privately). False where the name has dot components: then the caller binds the
    name as it reads from the stand-in's root. `ids`: the file system ids to bind with (_bind_ids, _mapped)."""
    from engine import strategy
    absolute = name.startswith("/")
    parts = [p for p in name.split("/")[:-1] if p]
    if any(p in (".", "..") for p in parts):
        return False
    private = strategy.current().sources == "yard"

    def body(ids):
        if ids is not None:
            kernel.fs_ids_keeping_caps(*ids)
        if not parts:
            os.fchdir(d)
            if absolute:
                os.chroot(".")
            s.bind(name)
            return True
        top = _fresh("tmpfs")
        sub = parts if absolute else ["w"] + parts
        procdir = next(p for p in ("p", "q") if p != sub[0])
        os.mkdir(procdir, 0o555, dir_fd=top)
        if private:
            _attach_privately(top)   # (no mounts on detached mounts before Linux 6.15)
        kernel.move_mount(_fresh("proc"), "", top, procdir, kernel.MOVE_MOUNT_F_EMPTY_PATH)
        for i in range(len(sub) - 1):
            os.mkdir("/".join(sub[: i + 1]), 0o755, dir_fd=top)
        os.symlink(f"/{procdir}/self/fd/{d}", "/".join(sub), dir_fd=top)
        os.fchdir(top)
        os.chroot(".")
        if not absolute:
            os.chdir("w")
        s.bind(name)
        return True

    try:
        return forkrun.run(body, ids)
    except OSError as e:
        st = os.fstat(d)
        if e.errno != errno.EOVERFLOW or (st.st_uid, st.st_gid) == ids:
            raise
        return forkrun.run(body, (st.st_uid, st.st_gid))   # as in _mapped


def _attach_privately(top: int) -> None:
    """In a forked child: attach detached mount `top` over the root of a mount namespace of the
    child's own, whose mounts are all private (nothing it mounts propagates back to the tree's).
    setns through our own pidfd puts our root at the new namespace's root, where a recursive
    make-private can start even when the caller's root is not a mount's root (a chroot)."""
    kernel.unshare(kernel.CLONE_NEWNS)
    me = kernel.pidfd_open(os.getpid())
    try:
        kernel.setns(me, kernel.CLONE_NEWNS)
    finally:
        os.close(me)
    kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    kernel.move_mount(top, "", kernel.AT_FDCWD, "/", kernel.MOVE_MOUNT_F_EMPTY_PATH)


def _fresh(fstype: str) -> int:
    """A detached mount of a new superblock of `fstype` (in a child that exits soon)."""
    fs = kernel.fsopen(fstype)
    kernel.fsconfig(fs, kernel.FSCONFIG_CMD_CREATE)
    return kernel.fsmount(fs)


def _prepare(key: str, obj: dict, holders: list, call):
    """A pair connected through a listener's name: the holder of its accepted end binds a
    listener there, connects, accepts, and removes it again (before the tree's own sockets are
    made, so the name is free). Returns [end 0, end 1]."""
    via = obj.get("via")
    if via is None:
        return None
    chan = next((ch for e, ch in holders if e.get("end") == via["end"]), holders[0][1])
    spec = {"type": obj["type"], "data": obj["data"], "msgs": obj.get("msgs"), "accepted": via["end"],
            **{k: via[k] for k in ("path", "abstract") if k in via}}
    return call(chan, "via", spec)


def _via(spec, fds):
    """In the stand-in: a connection through a temporary listener at the dumped name."""
    t = _TYPE_NO[spec["type"]]
    name = b"\0" + base64.b64decode(spec["abstract"]) if "abstract" in spec else spec["path"]
    if isinstance(name, str) and not os.path.isdir(os.path.dirname(name) or "."):
        a, c = _accept_aside(t, name)   # (the listener's directory was removed: CRIU's sk-unix01)
    else:
        a, c = _accept_at(t, name)
    ends = [None, None]
    ends[spec["accepted"]], ends[1 - spec["accepted"]] = a.detach(), c.detach()
    for end, data in enumerate(spec.get("data") or ()):
        if data:
            os.write(ends[1 - end], base64.b64decode(data))
    rest = list(fds)
    for end, queue in enumerate(spec.get("msgs") or ()):
        with socket.socket(fileno=os.dup(ends[1 - end])) as peer:
            rest = _send_queue(peer, queue, rest)
    return None, ends


def _accept_aside(t: int, name: str) -> tuple[socket.socket, socket.socket]:
    """(accepted, client) of a connection through a temporary listener bound to `name` with its
    file in a fresh detached tmpfs (_bind_beside), where the name leads nowhere any more."""
    top = _fresh("tmpfs")
    lst = socket.socket(socket.AF_UNIX, t)
    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        # (as the root of the stand-in's user namespace: its own ids may be ones the namespace of
        # the fresh tmpfs does not map)
        if not _bind_beside(lst, top, name, (0, 0)):
            raise FdError(errno.EOPNOTSUPP, f"{name}: a connection accepted from a listener whose directory is "
                                            "gone is made through a name bound aside, which a name with '.' or "
                                            "'..' components cannot be")
        lst.listen(1)
        c = socket.socket(socket.AF_UNIX, t)
        os.fchdir(top)
        c.connect(os.path.basename(name))
        a, _ = lst.accept()
        return a, c
    finally:
        os.fchdir(cwd)
        os.close(cwd)
        lst.close()
        os.close(top)


def _accept_at(t: int, name) -> tuple[socket.socket, socket.socket]:
    """(accepted, client) of a connection through a temporary listener at `name` (a socket file
    there, restored with its filesystem, is moved aside for the moment)."""
    lst = socket.socket(socket.AF_UNIX, t)
    aside = None
    where = (os.path.dirname(name) or ".") if isinstance(name, str) else None   # (for _mapped)
    try:
        if isinstance(name, str):
            try:
                if stat.S_ISSOCK(os.lstat(name).st_mode):
                    # The listener's socket file, restored with its filesystem's files (its
                    # listener is gone: CRIU's overmount_sock): moved aside for the moment.
                    _mapped(None, where, os.rename, name, f"{name}.mntcr-{os.getpid()}")
                    aside = f"{name}.mntcr-{os.getpid()}"
            except FileNotFoundError:
                pass
        if where is None:
            lst.bind(name)
        else:
            _mapped(None, where, lst.bind, name)
        lst.listen(1)
        c = socket.socket(socket.AF_UNIX, t)
        c.connect(name)
        a, _ = lst.accept()
    finally:
        lst.close()
        if isinstance(name, str):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
            if aside is not None:
                _mapped(None, where, os.rename, aside, name)
    return a, c


def _open(r: RestoreFd) -> int:
    e = r.entry
    if "obj" in e:
        st = r.state.get(e["obj"])
        if st is None:
            obj = r.objects[e["obj"]]
            sent = _open_inflight(r, [m for q in obj.get("msgs") or () for m in q])
            try:
                st = r.state[e["obj"]] = r.standin("make", {"pair": True, "type": obj["type"], "data": obj["data"],
                                                            "msgs": obj.get("msgs")}, sent)
            finally:
                for x in sent:
                    os.close(x)
            r.keep.extend(st)
        fd = os.dup(st[e["end"]])
        if "path" in e or "abstract" in e:
            # A datagram pair end bound to a name of its own: bound again by its holder.
            spec, sent = _name_spec(r, e)
            try:
                r.standin("bind", spec, [fd] + sent)
            finally:
                for x in sent:
                    os.close(x)
            if e.get("unlinked"):
                unix_ghost.hold(r)
    else:
        spec, sent = _name_spec(r, e)
        if e.get("dangling"):
            spec.update({"msgs": e.get("msgs"), "data": e.get("data")})
            sent = _open_inflight(r, e.get("msgs") or ())
        try:
            fd = r.standin("make", spec, sent)[0]
        finally:
            for x in sent:
                os.close(x)
        if e.get("unlinked"):
            unix_ghost.hold(r)
    if e["flags"] & os.O_NONBLOCK:
        os.set_blocking(fd, False)
    if "sender_id" in e:
        # (it sent datagrams still queued on a named socket: they are sent from it again)
        mine = os.dup(fd)
        r.keep.append(mine)
        r.state.setdefault("unix-senders", {})[e["sender_id"]] = mine
    if e.get("reached"):
        r.late.append((f"{r.where}: connecting a socket to it", lambda: _reach(r, e)))
    if "msgs" in e and not e.get("dangling"):
        r.late.append((f"{r.where}: sending its queued datagrams again", lambda: unix_backlog.deliver(r, e)))
    if "connect" in e:
        mine = os.dup(fd)
        r.keep.append(mine)
        c = e["connect"]
        # (a listener's pending connections connect in their queue order)
        r.late.append((f"{r.where}: connecting to {c.get('path') or '(abstract)'}",
                       lambda: _connect(r, mine, c, e.get("sent")), c.get("order", -1)))
    return fd


def _name_spec(r: RestoreFd, e: dict) -> tuple[dict, list[int]]:
    """(what the stand-in makes or binds of entry `e`, the fds sent with it: the directory its
    socket file goes to, on the restored mount: where it was, or a fresh one for a ghost)."""
    spec = {k: e[k] for k in ("type", "abstract", "path", "listen", "dangling", "owner", "mode") if k in e}
    if e.get("unlinked"):
        # Its socket file was unlinked: bound in a fresh directory of its mount, unlinked later.
        spec.update({"base": e["path"].rsplit("/", 1)[-1], "ghost": True})
        return spec, [unix_ghost.make_dir(r)]
    if "bound" not in e:
        return spec, []
    b = e["bound"]
    parent = b["path"].rsplit("/", 1)[0] or "/"
    try:
        sent = [r.open_at(b["mnt"], parent, os.O_PATH | os.O_DIRECTORY)]
    except KeyError:
        raise FdError(errno.EINVAL, f"{r.where}: its socket file is on mount {b['mnt']}, which the image "
                                    "does not have") from None
    spec["base"] = b["path"].rsplit("/", 1)[1]
    return spec, sent


def _bind_in(spec, fds):
    """In the stand-in: bind socket fds[0] (one end of a pair) to its dumped name (_make's way)."""
    s = socket.socket(fileno=fds[0])
    try:
        if "abstract" in spec:
            s.bind(b"\0" + base64.b64decode(spec["abstract"]))
        else:
            _bind_path(s, spec, fds[1:])
    finally:
        s.detach()   # (the received fds are the stand-in's to close)
    return None, []


def _reach(r: RestoreFd, e: dict) -> None:
    """Connect a throwaway datagram socket to named socket `e` (made by now) and close it, as a
    client once did: the kernel marks `e` established. An abstract name from the stand-in (a new
    socket's network namespace is its maker's); a path from here, through its socket file."""
    if "abstract" in e:
        r.standin("reach", e["abstract"])
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        _connect_to(r, s, e)


def _reach_in(name, fds):
    """In the stand-in: _reach for abstract name `name` (base64)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(b"\0" + base64.b64decode(name))
    return None, []


def _connect(r: RestoreFd, fd: int, c: dict, sent=None) -> None:
    """Connect our copy `fd` of a restored socket to the named socket `c` (made by now): an abstract
    name in the socket's own network namespace; a path through its socket file on the restored
    mount (a /proc magic link from here: the name needs to lead nowhere from the restorer). Then
    send what the client of a pending connection had sent (`sent`: stream bytes, or messages),
    which waits for the listener's accept() again."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        _connect_to(r, s, c)
        for m in [sent] if isinstance(sent, str) else sent or ():
            try:
                s.sendall(base64.b64decode(m), socket.MSG_DONTWAIT)
            except BlockingIOError:
                raise FdError(errno.EAGAIN, "the data its client had sent does not fit its send buffer") from None
    finally:
        s.close()


def _connect_to(r: RestoreFd, s: socket.socket, c: dict) -> None:
    """Connect `s` to named socket `c` (a `connect`, or a named entry): see _connect."""
    if "abstract" in c:
        s.connect(b"\0" + base64.b64decode(c["abstract"]))
        return
    at = unix_ghost.sock_file(r, c)
    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        os.fchdir(r.proc)
        s.connect(f"self/fd/{at}")
    finally:
        os.fchdir(cwd)
        os.close(cwd)
        os.close(at)


def _open_inflight(r: RestoreFd, msgs) -> list[int]:
    """Our fds on new descriptions of the files in flight in `msgs`, in order (their mounts must be
    among the entry's `mnts`, which the validator checked)."""
    from engine import fds as kinds
    out: list[int] = []
    try:
        for m in msgs:
            if not isinstance(m, dict):
                continue
            for f in m["fds"]:
                if f["mnt"] not in r.entry.get("mnts", ()):
                    raise FdError(errno.EINVAL, f"{r.where}: an fd in flight on mount {f['mnt']}, not in its mnts")
                if "obj" in f and r.objects.get(f["obj"], {}).get("kind") != "pipe":
                    raise FdError(errno.EINVAL, f"{r.where}: an fd in flight names no pipe object {f['obj'][:40]!r}")
                sub = RestoreFd(entry={"fd": -1, **f}, objects=r.objects, state=r.state, open_at=r.open_at,
                                standin=r.standin, keep=r.keep, proc=r.proc, open_ghost=r.open_ghost)
                out.append(kinds.lookup(f["kind"]).open(sub))
    except BaseException:
        for x in out:
            os.close(x)
        raise
    return out


def _mode_rule(v) -> str | None:
    return None if 0 <= v <= 0o7777 else "must be a permission mode (0..0o7777)"


def _owner_rule(v) -> str | None:
    if len(v) != 2 or any(type(x) is not int or not 0 <= x < 2**32 - 1 for x in v):
        return "must be [uid, gid]"
    return None


register(FdKind(name="unix", matches=lambda t, m: t.startswith("socket:["), dump=_dump, open=_open,
                mounts=lambda e: ([e["bound"]["mnt"]] if "bound" in e and not e["bound"].get("detached") else [])
                + list(e.get("mnts", ()))
                + ([e["connect"]["mnt"]] if "mnt" in e.get("connect", {}) else []), finish=_finish,
                precheck=unix_prestop.precheck, prefinish=unix_prestop.prefinish,
                check=_check, check_object=_check_object, prepare=_prepare,
                standin={"make": _make, "bind": _bind_in, "via": _via, "deliver": unix_backlog.deliver_in, "reach": _reach_in}, fields={
                        "connect": F(DICT, required=False),"type": F(STR), "abstract": F(STR, required=False), "path": F(STR, required=False, rule=_name_rule), "listen": F(INT, required=False), "end": F(INT, required=False),
                        "bound": F(DICT, required=False, rule=record(LOC)), "dangling": F(BOOL, required=False), "data": F(STR, required=False),
                        "unlinked": F(STR, required=False),
                        "owner": F(LIST, required=False, rule=_owner_rule),
                        "mode": F(INT, required=False, rule=_mode_rule),
                        "msgs": F(LIST, required=False), "mnts": F(LIST, required=False),
                        "senders": F(LIST, required=False), "sender_id": F(STR, required=False),
                        "sent": F(STR + LIST, required=False), "reached": F(BOOL, required=False)}))
