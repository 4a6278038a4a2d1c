"""Unix sockets (the fd kind): socket pairs (both ends, queued stream data), unbound ones, abstract
names and names bound to a path, listening or not; netlink, inet and packet sockets are handed to their
own kinds (engine/fds/netlink.py, inet.py, packet.py), any other family is refused naming the fd.

Dump asks what case a socket is (`case_of`: a listener, a connection not accepted yet, one whose
peer is gone, a named one with datagrams waiting, a client of a named socket, a pair end) and
records it; restore's entry points make it again. Sockets are made by the stand-in of the process
that holds them (so they belong to its network namespace, where abstract names live) and handed
back to the restorer, which gives the same description to every holder.

The concepts live in helper modules of this kind:
- unix_diag: what sock_diag lists (peers, files, pending connections, queue lengths);
- unix_locate: which mount of the tree holds a path-bound socket's file;
- unix_bind: binding the dumped name again with its file where it was (bind_beside; before 6.15
  from a private mount namespace, attach_privately), as the file's owner, with its mode;
- unix_queue: queued messages (peeked with a peek offset) and the fds in flight with them;
- unix_pair: pair ends, and pairs made again through a temporary listener at the name;
- unix_backlog: datagrams queued on a named socket, each sent again from its sender, and what a
  pending connection's client had sent;
- unix_ghost: sockets whose file was unlinked since;
- unix_opts: the socket options it was given (SO_PASSCRED, buffer sizes...);
- unix_prestop: the refusals told before the tree is stopped;
- unix_check: the image validator's part.

A datagram socket connected to a named socket of the tree, and the client of a connection its
listener has not accepted yet (in queue order), are made unconnected and connected again once
every process holds its fds (the restorer's late steps), through the socket file on the restored
mount by a /proc magic link, or by the abstract name.

A pending connection whose client is gone (sock_diag names it 0) is made again from a fresh
client that connects, sends what the gone one had and closes.

Fds in flight on a stream pair (socketpair(2), or a connection accepted from a listener) are kept
with its queue in segments, each ending with the bytes that carried fds (a peek with a peek offset
stops there), and sent again so. A pair's own ends in flight on it are sent again as the new
pair's ends (unix_queue.PAIR_END); any other socket in flight is refused. An accepted connection's
queues are sent again once its first end is opened (`_fill_late`: the fds in flight are files the
tree's processes open), the connection itself made before any fd (unix_pair.prepare).

Not done yet (refused at dump): fds in flight on a listener or on a stream whose peer is not its
own, other kinds in flight,
data a pending connection's client already sent, or any pending connection whose client is gone,
when the tree keeps running (--leave-running: only accept() reads it), a datagram queued on a named socket from a sender name no socket of the
tree holds, a connection to a named socket outside the tree, and a path name whose file is only on
a detached mount where the kernel lacks SIOCUNIXFILE.
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import os
import socket
import struct
import stat

from engine.fds import (FdError, FdKind, RestoreFd, register, unix_backlog, unix_bind, unix_check, unix_diag,
                        unix_ghost, unix_locate, unix_opts, unix_pair, unix_prestop, unix_queue)


def _dump(d) -> dict:
    c = d.copy()
    with socket.socket(fileno=os.dup(c)) as s:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_NETLINK:
            from engine.fds import netlink
            return {"kind": "netlink", **netlink.dump(d, s)}   # (a kind of its own, engine/fds/netlink.py)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) in (socket.AF_INET, socket.AF_INET6):
            from engine.fds import inet
            return {"kind": "inet", **inet.dump(d)}   # (a kind of its own, engine/fds/inet.py)
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_PACKET:
            from engine.fds import packet
            return {"kind": "packet", **packet.dump(d)}   # (a kind of its own, engine/fds/packet.py)
    out = _dump_one(d)
    with socket.socket(fileno=os.dup(c)) as s:
        out["opts"] = unix_opts.read(s)
    st = os.stat(f"/proc/{d.pid}/fd/{d.fd}")
    netns, _diag = unix_diag.netns_of(d, st.st_ino, os.stat(f"/proc/{d.pid}/ns/net").st_ino)
    out["_ino"] = f"{netns}:{st.st_ino}"   # (for _finish, then dropped)
    return out


class Sock:
    """One unix socket being dumped: our copy of it and what sock_diag says of it and its peer."""

    def __init__(self, d, c: int, s: socket.socket):
        self.d, self.c, self.s = d, c, s
        self.typ = refuse_family(d, s)
        self.ino = os.stat(f"/proc/{d.pid}/fd/{d.fd}").st_ino
        # The socket's network namespace (where sock_diag lists it), which is not always its
        # holder's: the server end of a stream connection is made in the client's (the kernel's
        # unix_stream_connect), in another namespace when the client connected through a socket file.
        self.holder_netns = os.stat(f"/proc/{d.pid}/ns/net").st_ino
        self.netns, self.diag = unix_diag.netns_of(d, self.ino, self.holder_netns)
        if self.ino not in self.diag:
            # Listed in none of the tree's namespaces: read its holder's again (the socket may be
            # newer than the table read for this dump), else its namespace has no process of the
            # tree (made there, then its maker left it) and sock_diag, which tells its peer and
            # queue, cannot be asked there: without it a connected pair would pass for two ends
            # whose peers are gone.
            self.diag = d.scratch[("unix", self.netns)] = unix_diag.diag_in(d.pid)
            if self.ino not in self.diag:
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: a unix socket of a network namespace that no "
                                                "process of the tree is in (made there, then left): not supported")
        self.rec = self.diag[self.ino]
        self.out = {"type": unix_diag.TYPES[self.typ], **unix_bind.name_of(s.getsockname())}   # the image entry being built
        refuse_name(d, self.out)
        self.peer = self.rec.get("peer")
        # (where sock_diag lists the peer: another network namespace of the tree when the socket
        # was connected through a socket file across namespaces)
        self.peer_netns, self.peer_diag = self.netns, self.diag
        if self.peer and self.peer not in self.diag:
            found = unix_diag.find_peer(d, self.peer, self.netns)
            if found is not None:
                self.peer_netns, self.peer_diag = found
        self.inflight = 0

    @property
    def named(self) -> bool:
        """Bound to a path or an abstract name."""
        return "path" in self.out or "abstract" in self.out

    @property
    def mutual(self) -> bool:
        """Its peer's peer is it: one end of a pair (or of an accepted connection)."""
        return bool(self.peer) and self.peer_diag.get(self.peer, {}).get("peer") == self.ino


def case_of(k: Sock) -> tuple[str, object]:
    """Which case socket `k` is, asked of the stopped tree by `_dump_one` and of the running one by
    unix_prestop.precheck: ("listener", None), ("embryo", (its listener, its place in the queue)): a
    connection not accepted yet, ("dangling", None): its peer is gone, ("backlog", None): a named one
    with datagrams waiting, ("client", peer): connected to a socket that is not its pair, ("pair",
    None), or ("alone", None). Refuses fds in flight on a stream or a listener."""
    d, s = k.d, k.s
    k.inflight = int((d.info().get("scm_fds") or ["0"])[0])
    listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if k.inflight and (listening or (k.typ == socket.SOCK_STREAM and not _a_pair(k))):
        # fds passed with SCM_RIGHTS and not received yet in a listener's pending connections, or
        # on a stream that is not an end of a pair (socketpair(2) or a connection accepted from a
        # listener: its queue is peeked in segments, each ending with the bytes that carried fds,
        # unix_pair.dump_end).
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: {k.inflight} fds in flight (SCM_RIGHTS not yet received) "
                                        f"on a {'listening' if listening else 'stream'} socket"
                                        f"{'' if listening else ' whose peer is not its own'}: "
                                        "not supported; let the receiver take them (recvmsg) before dumping")
    if listening:
        return "listener", None
    embryos = d.scratch.get(("unix-embryos", k.netns))
    if embryos is None:
        embryos = d.scratch[("unix-embryos", k.netns)] = unix_diag.embryos(k.diag)
    if k.ino in embryos:
        return "embryo", embryos[k.ino]
    if not k.peer and not k.named and connected(s):
        return "dangling", None
    if not k.peer and k.named and (k.inflight or unix_queue.waiting(k.s, k.c)):
        return "backlog", None
    if k.peer and not k.mutual:
        return "client", k.peer
    if k.peer and k.peer_netns != k.netns and k.typ == socket.SOCK_DGRAM and k.named:
        # Datagram sockets of two network namespaces connected to each other through their socket
        # files: each end is made in its own, bound and connected to the other again (a client each).
        return "client", k.peer
    if k.peer and k.peer_netns != k.netns:
        # Restore makes both ends of a pair in one stand-in, so in one network namespace.
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: unix socket connected to a socket of another network "
                                        "namespace of the tree (through a socket file): not supported yet")
    return ("pair" if k.peer else "alone"), None


def _a_pair(k: Sock) -> bool:
    """Is `k` one end of a pair of the tree's network namespace whose peer's peer is it
    (socketpair(2), or a connection accepted from a listener)?"""
    return k.mutual and k.peer_netns == k.netns


def _dump_one(d) -> dict:
    """The image entry of unix socket fd `d`, case by case (`case_of`): a listener, a connection not
    accepted yet, a socket whose peer is gone, a named one with datagrams waiting, a client of a
    named socket, or one end of a pair (refusing what restore cannot make again)."""
    c = d.copy()
    s = socket.socket(fileno=os.dup(c))
    try:
        k = Sock(d, c, s)
        out = k.out
        if "path" in out and (not k.mutual or k.typ == socket.SOCK_DGRAM):
            _record_bound(k)   # (an accepted end's name is its listener's; a datagram pair end's its own)
        case, detail = case_of(k)
        if case != "pair" and k.rec.get("shutdown"):
            out["shut"] = k.rec["shutdown"]   # (a pair's ends: its object's "shut", unix_pair.dump_end)
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
            out.update(_connected_to(d, s, k.typ, detail, k.peer_diag, k.peer_netns, k.inflight))
            return out
        if case == "pair":
            unix_pair.dump_end(k)
        return out
    finally:
        s.close()


def _record_bound(k: Sock) -> None:
    """A socket bound to a path: where its file lies (the mount restore binds it on), its owner
    and mode."""
    d, out = k.d, k.out
    ghost = unix_ghost.place(d, out["path"], k.c)
    if ghost is not None:
        out.update({"bound": ghost, "unlinked": True})   # (numbered by _finish)
    else:
        out["bound"] = unix_locate.writable(d, unix_locate.locate(d, out["path"], k.rec.get("vfs")))
    st = unix_locate.file_stat(d)
    if st is not None:
        out["owner"], out["mode"] = [st.st_uid, st.st_gid], stat.S_IMODE(st.st_mode)


def _as_listener(k: Sock) -> dict:
    """A listening socket: its backlog, and the connections waiting to be accepted."""
    out = k.out
    out["listen"] = max(k.rec.get("wqueue", 128), 1)
    # Who listened (what SO_PEERCRED and SO_PEERGROUPS show its clients, and dbus checks): restore
    # listens as them. The kernel keeps them on the listener itself, where both options read them.
    pid, out["cred"], out["cred_groups"] = listener_creds(k, k.s)
    if pid not in (k.d.scratch.get("pids") or ()):
        out["cred_gone"] = True   # (it listened in a process since gone, or outside the tree: a daemon's parent)
    elif listened_elsewhere(k, pid):
        out["listened_by"] = pid
    if k.rec.get("rqueue"):
        out["_pending"] = _pending(k)
        out["_where"] = k.d.where
    return out


def _as_dangling(k: Sock) -> dict:
    """Its peer is gone (closed by a process that exited: podman's end of conmon's sync socket):
    restored as one end of a pair whose other end is closed at once."""
    out = k.out
    out["dangling"] = True
    refuse_dangling(k)
    if k.typ != socket.SOCK_STREAM and (k.inflight or unix_queue.waiting(k.s, k.c)):
        # (systemd-nspawn keeps the fd of its kmsg FIFO in flight on such a socket)
        out["msgs"] = unix_queue.peek_messages(k.s, k.d, k.inflight)
        out["mnts"] = unix_queue.inflight_mounts(out["msgs"])
    elif unix_queue.inq(k.c):
        # (CRIU's sockets02: what the peer wrote before it closed; sent again by the peer made for it)
        data = unix_queue.peek_stream(k.s, unix_queue.inq(k.c), k.d.where)
        out["data"] = binascii.b2a_base64(data, newline=False).decode()
    return out


def listener_creds(k: Sock, s: socket.socket) -> tuple[int, list[int], list[int]]:
    """(the pid it listened in, [uid, gid], its supplementary groups) of listening socket `s` of
    `k` (SO_PEERCRED, SO_PEERGROUPS: what its clients see), refused (FdError) where restore could
    not listen so (refuse_listener_groups, _ids, _elsewhere). Asked before the stop too."""
    pid, uid, gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    cred, groups = [uid & 0xffffffff, gid & 0xffffffff], unix_bind.listener_groups(s)
    refuse_listener_groups(k, groups)
    refuse_listener_ids(k, cred, groups)
    return pid, cred, groups


def refuse_listener_groups(k: Sock, groups: list[int]) -> None:
    """Refuse a listener that listened with other supplementary groups (`groups`) than its process
    has, in a user namespace that denies setgroups: its stand-in, holding the process's there
    (engine/userns_groups.py), cannot take others to listen with. Asked before the stop too."""
    from engine import kernel
    pid = k.d.pid
    with open(f"/proc/{pid}/setgroups") as f:
        if f.read().strip() != "deny":
            return
    own = sorted(int(g) for g in kernel.proc_status(pid, ("Groups",)).get("Groups", "").split())
    if sorted(groups) != own:
        raise FdError(errno.EOPNOTSUPP, f"{k.d.where}: a listener that listened with groups {sorted(groups)}, other "
                                        f"than its process's ({own}), in a user namespace that denies setgroups: "
                                        "not supported")


def refuse_listener_ids(k: Sock, cred: list[int], groups: list[int]) -> None:
    """Refuse a listener that listened with ids (`cred` [uid, gid], `groups`, ours) the user
    namespace a non-root user made, that its process is in (the outermost such), does not map: a
    process outside it listened (root's socket activation) with ids restore gives no tree of that
    user's (the validator refuses them: imageformat._check_fd_ids). Supplementary groups its
    process holds too are its own (the user's, kept through `unshare -r`: engine/ownergroups.py
    bounds them). Asked before the stop too."""
    from engine import kernel, userns
    owned = userns.outermost_owned(k.d.pid)
    if owned is None:
        return
    maps, owner = owned
    held = {int(g) for g in kernel.proc_status(k.d.pid, ("Groups",)).get("Groups", "").split()}
    groups = [g for g in groups if g not in held]
    for key, ids, ranges in (("uid", [cred[0]], maps.uid_map), ("gid", [cred[1], *groups], maps.gid_map)):
        bad = next((i for i, here in zip(ids, userns.inside(ids, ranges)) if here is None), None)
        if bad is not None:
            raise FdError(errno.EOPNOTSUPP, f"{k.d.where}: a listener that listened as {key} {bad}, which the "
                                            f"user namespace uid {owner} made (its process's) does not map: "
                                            "restore gives no id that user lacks; not supported")


def listened_elsewhere(k: Sock, pid: int) -> bool:
    """Whether the listener listened in process `pid` (SO_PEERCRED's), a live process of the tree
    other than its first holder, `k`'s process (processes in the image's order): a parent that made
    the socket, listened and handed it to a child before it closed its own (Python's forkserver,
    socket activation inside the tree). Restore makes the socket in the first holder and listens in
    that process's stand-in (`listened_by`), so its clients see the same process as the server."""
    return pid != k.d.pid and pid in (k.d.scratch.get("pids") or ())


def refuse_dangling(k: Sock) -> None:
    """Refuse a stream socket whose peer is gone with more bytes queued on it than an image keeps;
    asked before the stop too (unix_prestop)."""
    n = unix_queue.inq(k.c) if k.typ == socket.SOCK_STREAM else 0
    if n > unix_queue.MAX_DATA:
        raise FdError(errno.EOPNOTSUPP, f"{k.d.where}: {n} bytes queued: too many")


def _with_backlog(k: Sock) -> dict:
    """Datagrams other sockets sent to its name (a syslog or sd_notify socket's backlog): sent
    again at restore, in order, each from its sender: an unbound one from a fresh unbound
    socket, a named one from the tree's socket of that name (_finish finds it)."""
    out = k.out
    senders: list = []
    out["msgs"] = unix_queue.peek_messages(k.s, k.d, k.inflight, senders)
    out["mnts"] = unix_queue.inflight_mounts(out["msgs"])
    if any(senders):
        out["_senders"] = senders
        out["_where"] = k.d.where
    return out


def refuse_family(d, s: socket.socket) -> int:
    """Refuse socket `s` (our copy of fd d.fd) of another family than unix, or of a type restore does
    not make; returns its type. (Netlink sockets are engine/fds/netlink.py's.)"""
    fam = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if fam != socket.AF_UNIX:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: family {fam} sockets are not supported (only unix, inet, "
                                        "netlink and packet sockets)")
    if typ not in unix_diag.TYPES:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: unix socket of type {typ} is not supported")
    return typ


def refuse_name(d, name: dict) -> None:
    """Refuse a socket bound to a path that is not a normalised name (`name`: from unix_bind.name_of): one with
    '.', '..' or '//', which restore's validator would refuse in the image."""
    if "path" in name:
        from engine.image import ImageError
        try:
            unix_check.check_name(name["path"], "name")
        except ImageError:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: bound to {name['path']!r}, not a normalised name "
                                            "(the only names the image keeps): not supported") from None


def _pending(k: Sock) -> list[str | None]:
    """The clients ("netns:inode", None for one gone) of listener k's pending connections, which
    restore connects again in queue order; refused where that cannot be exact (the queue not what
    sock_diag lists). Data a client sent already waits in the server end the kernel made for the
    connection, which no fd reaches before accept(): a step dump runs last (`takes`) accepts the
    connections up to the last such one (or one whose client is gone: whether anything waits there
    only accept() tells) and reads it, for restore to send again from the client once connected
    (from a fresh client closed at once for one gone: `gone`); with --leave-running (no `takes`)
    that is refused."""
    d = k.d
    out, last = pending_clients(d, k.rec, k.diag, k.netns)
    key = ("unix-take", k.netns, k.ino)
    if last >= 0 and key not in d.scratch:   # (once for a listener: each fd on it, dups or a child's, would accept again)
        takes = d.scratch.get("takes")
        if takes is None:
            refuse_pending_data(d, None in out[: last + 1])
        d.scratch[key] = lst = os.dup(d.copy())
        takes.append(lambda doc: unix_backlog.take_pending(lst, out[: last + 1], k.typ, doc, d.where,
                                                                f"{k.netns}:{k.ino}"))
    return out


def pending_clients(d, rec: dict, diag: dict, netns: int) -> tuple[list[str | None], int]:
    """(The clients ("netns:inode") of listener d's pending connections in queue order, None for a
    client gone (closed: sock_diag names it 0), and the place of the last one dump must accept
    (data waits on it, or its client is gone) or -1), refusing where that cannot be exact (a client
    in another network namespace, the queue not what sock_diag lists); asked before the stop too
    (unix_prestop)."""
    icons = rec.get("icons") or []
    if len(icons) != rec.get("rqueue"):
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: listening unix socket with {rec.get('rqueue')} connections not "
                                        f"yet accepted, {len(icons)} of them listed: not supported")
    # (sock_diag names each pending connection by its client's inode, the server end having none
    # yet; what the client sent is still charged to the client's send buffer, its wqueue)
    out: list[str | None] = []
    last = -1
    for i, client in enumerate(icons):
        if client == 0:
            out.append(None)
            last = i
            continue
        if client not in diag:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: listening unix socket with a connection not yet accepted "
                                            "whose client is in another network namespace: not supported")
        if diag[client].get("wqueue"):
            last = i
        out.append(f"{netns}:{client}")
    return out, last


def refuse_pending_data(d, gone: bool) -> None:
    """Refuse listener d: data waits on a connection it has not accepted (or may: `gone`, its client
    closed it), and the tree keeps running."""
    what = "whose client is gone (what it sent may wait there)" if gone else "on which data already waits"
    raise FdError(errno.EOPNOTSUPP, f"{d.where}: listening unix socket with a connection not yet accepted {what}: "
                                    "only accept() reads it, which takes the connection from the tree; not "
                                    "supported with --leave-running")


def _connected_to(d, s: socket.socket, typ: int, peer: int, diag: dict, netns: int, inflight: int) -> dict:
    """A socket connected to one that is not its pair: a datagram socket connected to a named
    datagram socket (a client of /run/systemd/notify or /dev/log). Kept as `connect` (the name, and
    for a path the mount and path of its socket file), connected again at restore once every
    process holds its fds; the named socket must be one of the tree's (finish checks it)."""
    what = f"{d.where}: unix socket connected to a socket that is not its pair"
    name = peer_name(d, s, typ, peer, diag, inflight)
    if "path" in name:
        try:
            loc = unix_locate.locate(d, name["path"], diag.get(peer, {}).get("vfs"))
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
    if inflight or unix_queue.waiting(s, d.copy()):
        raise FdError(errno.EOPNOTSUPP, f"{what}: datagrams queued on it: not supported")
    name = unix_bind.name_of(s.getpeername())
    # (a relative name, CRIU's sk-unix-listen01, is connected to again through the file it found)
    if not name or unix_bind.MAGIC.match(name.get("path", "")):
        raise FdError(errno.EOPNOTSUPP, f"{what}, and that one has no name to connect to again "
                                        f"({name or 'unnamed'}): not supported")
    return name


def _finish(objects: dict, entries: list[dict]) -> None:
    """Refuse a socket connected to a named socket that no process of the tree holds (restore would
    connect to whatever has that name then), and drop the dump's own bookkeeping fields."""
    unix = [e for e in entries if e.get("kind") == "unix" and "_ino" in e]
    unix_pair.settle(objects)
    unix_pair.inflight_mnts(objects, entries)
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
            if client is not None and client not in have:
                raise FdError(errno.EOPNOTSUPP, f"{e.get('_where')}: listening unix socket with a connection not "
                                                "yet accepted whose client no process of the tree holds: not supported")
    for e in unix:
        if e.get("_peer") and e["_peer"] not in have:
            c = e["connect"]
            target = c.get("path") or "@" + binascii.a2b_base64(c["abstract"]).decode(errors="replace")
            raise FdError(errno.EOPNOTSUPP, f"{e.get('_where')}: connected to {target}, a socket no process of the "
                                            "tree holds: not supported")


def connected(s: socket.socket) -> bool:
    """Is `s` connected (has a peer name, even one whose peer is gone)?"""
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def _make(args, fds):
    """In the stand-in: a socket (or a pair) of its network namespace, bound and listening as dumped."""
    spec = args
    if spec.get("dangling"):
        a, b = socket.socketpair(socket.AF_UNIX, unix_diag.TYPE_NO[spec["type"]])
        unix_queue.send_queue(b, spec.get("msgs") or (), fds)   # its queue, sent by the peer that goes at once
        if spec.get("data"):
            unix_queue.send_all(b, binascii.a2b_base64(spec["data"]))
        b.close()
        return None, [a.detach()]
    if spec.get("pair"):
        a, b = socket.socketpair(socket.AF_UNIX, unix_diag.TYPE_NO[spec["type"]])
        return None, unix_pair.fill([a.detach(), b.detach()], spec, fds)
    s = socket.socket(socket.AF_UNIX, unix_diag.TYPE_NO[spec["type"]])
    try:
        if "abstract" in spec:
            s.bind(b"\0" + binascii.a2b_base64(spec["abstract"]))
        elif "path" in spec:
            if unix_bind.MAGIC.match(spec["path"]):
                import fcntl
                hi = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 1024)   # off any fd number N it names
                s.close()
                s = socket.socket(fileno=hi)
            unix_bind.bind_path(s, spec, fds)
        if "listen" in spec:
            unix_bind.as_creds(spec, lambda: s.listen(spec["listen"]))
        return None, [s.detach()]
    finally:
        s.close()


def _open(r: RestoreFd) -> int:
    e = r.entry
    if "obj" in e:
        st = r.state.get(e["obj"])
        if st is None:
            obj = r.objects[e["obj"]]
            sent = unix_queue.open_inflight(r, [m for q in obj.get("msgs") or () for m in q])
            try:
                st = r.state[e["obj"]] = r.standin("make", {"pair": True, "type": obj["type"], "data": obj["data"],
                                                            "msgs": obj.get("msgs"), "shut": obj.get("shut")}, sent)
            finally:
                for x in sent:
                    os.close(x)
            r.keep.extend(st)
        elif unix_pair.late(r.objects[e["obj"]]) and not r.state.get(f"{e['obj']}:filled"):
            _fill_late(r, e["obj"], st)
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
            sent = unix_queue.open_inflight(r, e.get("msgs") or ())
        elsewhere = e.get("listened_by")
        if elsewhere is not None:
            spec.pop("listen")   # (bound by its holder, listened on by the process that did)
        try:
            fd = r.standin("make", spec, sent)[0]
        finally:
            for x in sent:
                os.close(x)
        if elsewhere is not None:
            _listen_in(r, elsewhere, fd, {k: e[k] for k in ("listen", "cred", "cred_groups") if k in e})
        if e.get("unlinked"):
            unix_ghost.hold(r)
    if e["flags"] & os.O_NONBLOCK:
        os.set_blocking(fd, False)
    unix_opts.apply(fd, e.get("opts") or {}, r.where)
    if "sender_id" in e:
        # (it sent datagrams still queued on a named socket: they are sent from it again)
        mine = os.dup(fd)
        r.keep.append(mine)
        r.state.setdefault("unix-senders", {})[e["sender_id"]] = mine
    if e.get("reached"):
        r.late.append((f"{r.where}: connecting a socket to it", lambda: _reach(r, e)))
    if "msgs" in e and not e.get("dangling"):
        r.late.append((f"{r.where}: sending its queued datagrams again", lambda: unix_backlog.deliver(r, e)))
    for g in e.get("gone") or ():
        # (a pending connection whose client is gone: a fresh client connects, sends, and closes)
        r.late.append((f"{r.where}: a connection not yet accepted whose client is gone",
                       lambda g=g: _connect_gone(r, e, g), g["order"]))
    if "connect" in e:
        mine = os.dup(fd)
        r.keep.append(mine)
        c = e["connect"]
        # (a listener's pending connections connect in their queue order)
        r.late.append((f"{r.where}: connecting to {c.get('path') or '(abstract)'}",
                       lambda: _connect(r, mine, c, e.get("sent"), e.get("oob")), c.get("order", -1)))
    if e.get("shut"):
        _shut_late(r, fd, e["shut"])
    return fd


def _fill_late(r: RestoreFd, key: str, ends: list[int]) -> None:
    """Queue on the pair `key` (an accepted connection made by unix_pair.prepare, our fds `ends`)
    what waited on it, with its fds in flight, opened now (unix_pair.late): by the stand-in of the
    first of its ends opened."""
    obj = r.objects[key]
    sent = unix_queue.open_inflight(r, [m for q in obj.get("msgs") or () for m in q])
    try:
        r.standin("fill", unix_pair.late_spec(obj), list(ends) + sent)
    finally:
        for x in sent:
            os.close(x)
    r.state[f"{key}:filled"] = True


def _shut_late(r: RestoreFd, fd: int, bits: int) -> None:
    """Shut our copy of socket `fd` down in directions `bits` (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2) once
    it is connected and what it holds was sent again (a datagram to a socket shut for reading fails)."""
    mine = os.dup(fd)
    r.keep.append(mine)

    def shut():
        with socket.socket(fileno=os.dup(mine)) as s:
            s.shutdown(bits - 1)   # (SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2)
    r.late.append((f"{r.where}: shutting it down again", shut, unix_ghost.CLEANUP_ORDER - 1))


def _name_spec(r: RestoreFd, e: dict) -> tuple[dict, list[int]]:
    """(what the stand-in makes or binds of entry `e`, the fds sent with it: the directory its
    socket file goes to, on the restored mount: where it was, or a fresh one for a ghost)."""
    spec = {k: e[k] for k in ("type", "abstract", "path", "listen", "cred", "cred_groups", "cred_gone", "dangling",
                                   "owner", "mode") if k in e}
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


def _listen_in(r: RestoreFd, pid: int, fd: int, spec: dict) -> None:
    """listen() on our socket `fd` in the stand-in of image process `pid`, as that process did."""
    call = r.standin_of(pid) if r.standin_of is not None else None
    if call is None:
        raise FdError(errno.EINVAL, f"{r.where}: listened on by process {pid}, which the image does not have")
    call("listen", spec, [fd])


def _listen(spec, fds):
    """In the stand-in: listen on socket fds[0] with the dumped backlog and credentials."""
    s = socket.socket(fileno=fds[0])
    try:
        unix_bind.as_creds(spec, lambda: s.listen(spec["listen"]))
    finally:
        s.detach()   # (the received fds are the stand-in's to close)
    return None, []


def _bind_in(spec, fds):
    """In the stand-in: bind socket fds[0] (one end of a pair) to its dumped name (_make's way)."""
    s = socket.socket(fileno=fds[0])
    try:
        if "abstract" in spec:
            s.bind(b"\0" + binascii.a2b_base64(spec["abstract"]))
        else:
            unix_bind.bind_path(s, spec, fds[1:])
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
        s.connect(b"\0" + binascii.a2b_base64(name))
    return None, []


def _connect(r: RestoreFd, fd: int, c: dict, sent=None, oob: dict | None = None) -> None:
    """Connect our copy `fd` of a restored socket to the named socket `c` (made by now): an abstract
    name in the socket's own network namespace; a path through its socket file on the restored
    mount (a /proc magic link from here: the name needs to lead nowhere from the restorer). Then
    send what the client of a pending connection had sent (`sent`: stream bytes, or messages),
    which waits for the listener's accept() again; a stream's urgent byte (`oob`: {at, byte}) sent
    with MSG_OOB after its first `at` bytes, so its mark is where it was."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        _connect_to(r, s, c)
        parts = [binascii.a2b_base64(m) for m in ([sent] if isinstance(sent, str) else sent or ())]
        if oob is not None:
            whole = b"".join(parts)
            parts = [whole[: oob["at"]], (binascii.a2b_base64(oob["byte"]), socket.MSG_OOB), whole[oob["at"]:]]
        for m in parts:
            data, flags = m if isinstance(m, tuple) else (m, 0)
            try:
                if data:
                    s.sendall(data, socket.MSG_DONTWAIT | flags)
                elif s.type != socket.SOCK_STREAM:
                    s.send(data, socket.MSG_DONTWAIT)   # (an empty message is a message)
            except BlockingIOError:
                raise FdError(errno.EAGAIN, "the data its client had sent does not fit its send buffer") from None
    finally:
        s.close()


def _connect_gone(r: RestoreFd, e: dict, g: dict) -> None:
    """A pending connection to listener `e` whose client is gone: a fresh unbound socket of the
    stand-in (its network namespace, where an abstract name lives) connects, sends what the client
    had (g["sent"]) and closes, leaving accept() that data, then end of file."""
    fd = r.standin("make", {"type": e["type"]}, [])[0]
    try:
        _connect(r, fd, e, g.get("sent"), g.get("oob"))
    finally:
        os.close(fd)


def _connect_to(r: RestoreFd, s: socket.socket, c: dict) -> None:
    """Connect `s` to named socket `c` (a `connect`, or a named entry): see _connect."""
    if "abstract" in c:
        s.connect(b"\0" + binascii.a2b_base64(c["abstract"]))
        return
    at = unix_ghost.sock_file(r, c)

    def connect():
        cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            os.fchdir(r.proc)
            s.connect(f"self/fd/{at}")
        finally:
            os.fchdir(cwd)
            os.close(cwd)
    try:
        # A host's socket (not one the image makes) only as the tree's user could connect to it:
        # a rootless tree's image naming /run/docker.sock must not get root's connection.
        if r.reach is not None and "mnt" in c and not (c.get("to") or c.get("unlinked")):
            r.reach(c["mnt"], lambda: os.dup(at), connect)
        else:
            connect()
    finally:
        os.close(at)


def _mounts(e: dict) -> list[int]:
    """The attached mounts restore opens for entry `e`: its socket file's, those of its fds in
    flight, and that of the socket file it connects to."""
    return (([e["bound"]["mnt"]] if "bound" in e and not e["bound"].get("detached") else [])
            + list(e.get("mnts", ()))
            + ([e["connect"]["mnt"]] if "mnt" in e.get("connect", {}) else []))


register(FdKind(name="unix", matches=lambda t, m: t.startswith("socket:["), dump=_dump, open=_open,
                mounts=_mounts, finish=_finish,
                precheck=unix_prestop.precheck, prefinish=unix_prestop.prefinish,
                check=unix_check.check, check_object=unix_check.check_object, fields=unix_check.FIELDS,
                ids=unix_check.listener_ids, prepare=unix_pair.prepare,
                standin={"make": _make, "bind": _bind_in, "listen": _listen, "via": unix_pair.via_in,
                         "fill": unix_pair.fill_in,
                         "deliver": unix_backlog.deliver_in, "reach": _reach_in}))
