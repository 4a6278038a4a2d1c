"""Unix and netlink socket refusals told before the tree is stopped (engine/prestop.py); an inet
socket's are engine/fds/inet.py's (`precheck`), which this hands it to.

What a running process's socket already shows is refused here with the line
`dump` gives once the tree is stopped, so that the common case leaves the tree
untouched (no SIGSTOP a parent, a ptracer or a job-control shell could see):
another family (packet...), a type restore does not make, netlink messages
waiting to be read, a name that is not normalised, a socket file removed on a
mount restore cannot bind it again on, fds in flight on a listener or on a stream that is not an
end of a socketpair, an fd in flight of
a kind not kept (in the datagram at the head of the queue: a peek sees that one only),
more data on a stream whose peer is gone than an image keeps, pending connections dump
cannot list exactly or whose client is outside the tree, urgent data (MSG_OOB) waiting on a
stream, data waiting (or maybe
waiting: its client is gone) on a connection not yet accepted (with
--leave-running), a listener that listened with other groups than its process's in a user
namespace that denies setgroups or in another live process of the tree than its first holder,
a connection to a socket
that is not its pair restore cannot make again or that is outside the tree,
and a datagram waiting on a named socket whose sender's name no datagram
socket of the tree holds.

Everything here only reads: a peek without a peek offset takes nothing and
moves nothing, so only the head datagram's sender is looked at (the socket's
own peek offset, set when a process uses one, is never touched: a socket with
one is left to `dump`). `dump` checks everything again on the stopped tree.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys

from engine import kernel

SO_PEEK_OFF = 42
SCRATCH = "unix-prestop"


def precheck(d) -> None:
    """Refuse socket fd `d` of a running process where its state already says `dump` would (the
    questions dump asks, engine/fds/unix.py: `case_of`, `pending_clients`, `peer_name`,
    `refuse_dangling`); note its name, peer, pending clients and head datagram's sender for
    `prefinish`. The tree runs: what sock_diag showed (read once a network namespace) may be older
    than the socket, so a refusal is told only when a fresh read says so too."""
    from engine.fds import FdError
    try:
        _precheck(d)
    except FdError:
        for key in [key for key in d.scratch if isinstance(key, tuple) and key[0] in ("unix", "unix-embryos")]:
            del d.scratch[key]
        _precheck(d)


def _precheck(d) -> None:
    from engine.fds import unix, unix_ghost, unix_queue
    c = d.copy()
    with socket.socket(fileno=os.dup(c)) as s:
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_NETLINK:
            from engine.fds import netlink   # (a tree without netlink sockets never loads it)
            netlink.refuse(d, s)
            return
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) in (socket.AF_INET, socket.AF_INET6):
            from engine.fds import inet
            inet.precheck(d)
            return
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_PACKET:
            from engine.fds import packet
            packet.precheck(d)
            return
        k = unix.Sock(d, c, s)
        entry = {**k.out, "_ino": f"{k.netns}:{k.ino}", "_where": d.where}
        if "path" in k.out and (not k.mutual or k.typ == socket.SOCK_DGRAM):
            # (as dump places it: an accepted end's name is its listener's) A socket whose file was
            # removed is restored (a ghost socket): refused only where unix_ghost.place cannot put it.
            if unix_ghost.place(d, k.out["path"], c) is None:
                from engine.fds import unix_locate
                unix_locate.note_detached(d)   # (a file on a detached mount: engine/detached.py precheck)
        case, detail = unix.case_of(k)
        if k.typ == socket.SOCK_STREAM:
            unix_queue.refuse_oob(s, d.where)   # (a peek: moves nothing)
        if k.inflight:   # (a pair's own ends in flight on it are kept: unix_pair.dump_end)
            unix_queue.refuse_head_inflight(d, s, {k.ino, k.peer} if case == "pair" else ())
        if case == "listener":
            unix.listener_creds(k, s)
            if k.rec.get("rqueue"):
                entry["_pending"], last = unix.pending_clients(d, k.rec, k.diag, k.netns)
                if last >= 0 and d.scratch.get("leave_running"):
                    unix.refuse_pending_data(d, None in entry["_pending"][: last + 1])
        elif case in ("embryo", "client"):
            peer = detail[0] if case == "embryo" else detail
            name = unix.peer_name(d, s, k.typ, peer, k.diag if case == "embryo" else k.peer_diag, k.inflight)
            if case == "client":
                entry.update({"connect": name, "_peer": f"{k.peer_netns}:{peer}"})
                if "path" in name and d.scratch.get("gates") is not None:   # (restore's rootless gate, asked first)
                    from engine import hostfiles
                    hostfiles.check_connect(d.scratch["gates"], d.pid, d.where, name["path"],
                                            k.peer_diag.get(peer, {}).get("vfs"), d.scratch["host_mnts"], d.mounts)
        if case in ("pair", "dangling", "backlog"):
            unix_queue.refuse_passcred_queue(s, c, d.where)
        if case == "pair":
            entry["_pair"] = (f"{k.peer_netns}:{k.peer}", k.typ)   # (for _refuse_outside_peers)
        elif case == "dangling":
            unix.refuse_dangling(k)
        elif case == "backlog" and k.typ == socket.SOCK_DGRAM and not unix.connected(s) \
                and s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) < 0:
            entry["_senders"] = _head_sender(s)
        d.scratch.setdefault(SCRATCH, []).append(entry)


def _head_sender(s: socket.socket) -> list[dict]:
    """[the name of the sender of the datagram at the head of s's queue] when it has one, else []."""
    from engine.fds import unix_bind
    try:
        # (no room for ancillary data: fds in flight with it are not installed here)
        _data, _anc, _flags, addr = s.recvmsg(1, 0, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return []   # (read meanwhile)
    sender = unix_bind.name_of(addr)
    return [sender] if sender else []


def prefinish(scratch: dict) -> None:
    """Once every socket of the tree was prechecked: refuse a head datagram whose named sender is
    no datagram socket of the tree (unix_backlog.name_senders), and a connection to a socket, or a
    pending one from a client, no process of the tree holds (unix.refuse_outside), on these entries.
    A socket the running tree made after its process was looked at counts: the tree's sockets are
    listed again (scratch["pids"]) before such a refusal. Then inet's (TCP connections' other ends)."""
    from engine.fds import FdError, unix, unix_backlog
    if "engine.fds.inet" in sys.modules:   # (else no inet socket was prechecked: it has nothing to check)
        sys.modules["engine.fds.inet"].prefinish(scratch)
    entries = scratch.pop(SCRATCH, [])
    unix_backlog.name_senders(entries)
    try:
        unix.refuse_outside(entries)
    except FdError:
        unix.refuse_outside(entries + [{"_ino": ino} for ino in _sockets(scratch.get("pids", ()))])
    _refuse_outside_peers(entries, scratch)


def _refuse_outside_peers(entries: list[dict], scratch: dict) -> None:
    """Refuse a connected socket (a pair's end, an accepted connection's, a client's) whose other end
    a process outside the tree holds (a tree's stdout connected to a log daemon, a client attached
    from outside): restore makes the pair again with both ends in the tree, and the one outside is
    not part of it, so the restored end would be connected to nothing. A peer no process holds (in
    flight in a queue, or gone) is left to dump."""
    from engine.fds import FdError, pipe_outside
    have = {e["_ino"] for e in entries}
    lacking = {e["_pair"][0]: e for e in entries if "_pair" in e and e["_pair"][0] not in have}
    if lacking:   # (the tree's sockets listed again: one made after its process was looked at counts)
        have = _sockets(scratch.get("pids", ()))
        lacking = {peer: e for peer, e in lacking.items() if peer not in have}
    if not lacking:
        return
    targets = {f"socket:[{peer.split(':')[1]}]": e for peer, e in lacking.items()}
    for pid, _fd, target in pipe_outside.holders(set(targets), set(scratch.get("pids", ()))):
        e = targets[target]
        kind = "datagram" if e["_pair"][1] == socket.SOCK_DGRAM else "stream"
        raise FdError(errno.EOPNOTSUPP, f"{e['_where']}: the other end of this unix {kind} connection is held by process "
                                        f"{pid} ({pipe_outside.comm(pid)}) outside the tree, which restore cannot "
                                        "connect again (the restored end would be connected to nothing): close the "
                                        "connection first (detach the client), dump that process with the tree, or "
                                        "give the tree a file instead")


def _sockets(pids) -> set[str]:
    """The sockets ("netns inode:inode") processes `pids` hold now."""
    out = set()
    for pid in pids:
        try:
            netns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        out.update(f"{netns}:{st.st_ino}" for _, st in kernel.fd_stats(pid) if stat.S_ISSOCK(st.st_mode))
    return out
