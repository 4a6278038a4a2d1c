"""What waits on a unix socket for a reader and must be sent again at restore by its sender:
datagrams other sockets sent to a named socket (a /dev/log or sd_notify backlog), and what the
client of a connection not accepted yet had sent (engine/fds/unix.py makes the sockets).

Datagrams queued on a named socket are peeked at dump (unix_queue.peek_messages) with their
senders' names; each named sender must be a datagram socket of the tree (`sender_id` on it,
`senders` on the receiver), and restore, once every process holds its fds, sends each datagram
again in order from that socket or, for an unbound sender, from a fresh unbound socket, so the
receiver sees the same sender address.

What a pending connection's client had sent waits in the server end the kernel made for the
connection, which no fd reaches before accept(): dump's last step (`takes`, never with
--leave-running) accepts the connections up to the last such one (or one whose client is gone:
only accept() tells whether anything waits there) and reads it; restore sends it again from the
client once it is connected (unix._connect), or from a fresh client that closes at once for one
gone (unix._connect_gone). Should writing the image fail
after that step, the tree resumes with those connections gone (dump accepted and closed them:
their clients read an end of file).
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import os
from engine import rx
import select
import socket
import struct

from engine.fds import FdError, RestoreFd, unix_queue

MAX_DATA = unix_queue.MAX_DATA
SO_SNDBUFFORCE = 32
_SIOCATMARK = 0x8905
SENDER_ID = rx.compile(r"^u-[0-9]{1,9}\Z")


def name_senders(unix: list[dict]) -> None:
    """The named senders of the datagrams queued on a named socket (`_senders`): each must be a
    datagram socket of the tree (in the receiver's network namespace, for an abstract name), which
    gets a "sender_id" (on every fd of its description); the receiver's "senders" lists, per
    message, that id or None (an unbound sender), or {"abstract": NAME} for an abstract name no
    socket holds any more when the receiver's name is abstract too (sent again from a fresh socket
    bound to it in the stand-in). Refused when no socket of the tree, or several, have the name
    otherwise: restore could not send that datagram from the name the receiver saw."""
    ids: dict[str, str] = {}
    for e in unix:
        senders = e.pop("_senders", None)
        if senders is None:
            continue
        net = e["_ino"].split(":")[0]
        out: list = []
        for name in senders:
            if not name:
                out.append(None)
                continue
            (key, value), = name.items()
            holders = [x for x in unix if x.get("type") == "dgram" and x.get(key) == value
                       and (key == "path" or x["_ino"].split(":")[0] == net)]
            socks = {x["_ino"] for x in holders}   # (fds of one socket share its inode)
            if not socks and key == "abstract" and "abstract" in e:
                # (its sender closed since, CRIU's socket_snd_addr: a fresh socket bound to that name
                # in the receiver's network namespace sends it, then closes)
                out.append({"abstract": value})
                continue
            if len(socks) != 1:
                shown = value if key == "path" else "@" + binascii.a2b_base64(value).decode(errors="replace")
                held = "several sockets of the tree hold" if socks else "no datagram socket of the tree holds"
                raise FdError(errno.EOPNOTSUPP, f"{e.get('_where')}: a datagram queued on it was sent from {shown}, "
                                                f"a name {held}: restore could not send it from there again; "
                                                "not supported")
            sid = ids.setdefault(holders[0]["_ino"], f"u-{len(ids)}")
            for x in holders:
                x["sender_id"] = sid
            out.append(sid)
        e["senders"] = out

def take_pending(lst: int, clients: list[str | None], typ: int, doc: dict, where: str, listener: str) -> None:
    """Accept the first pending connections of listener `lst` (ours; closed here), one per client
    in `clients` (queue order: accept takes the head), and give what each client sent to its entry
    in `doc` ("sent": stream bytes, or seqpacket messages), found by inode among the connecting
    ones (the tree is still stopped); for a client gone (None), to the listener's entries (each fd
    of socket `listener`, "netns:inode"): "gone" lists the place in the queue and what was sent of
    each."""
    entries, listeners = {}, []
    for p in doc["processes"]:
        netns = os.stat(f"/proc/{p['pid']}/ns/net").st_ino
        for e in p["fds"]:
            if e.get("kind") == "unix" and ("order" in e.get("connect", {}) or "listen" in e):
                ino = os.stat(f"/proc/{p['pid']}/fd/{e['fd']}").st_ino
                if "listen" not in e:   # (every fd of the client: restore makes its socket from any one)
                    entries.setdefault(f"{netns}:{ino}", []).append(e)
                elif f"{netns}:{ino}" == listener:
                    listeners.append(e)
    s = socket.socket(fileno=lst)
    try:
        for order, key in enumerate(clients):
            # (each is there, the tree being stopped: one that is not would block dump for ever)
            if not select.select([s], [], [], 0)[0]:
                raise FdError(errno.EOPNOTSUPP, f"{where}: a connection not yet accepted went from the queue while "
                                                "the tree was stopped: not supported")
            a, _ = s.accept()
            with a:
                msgs, oob = _read_all(a, where)
            clients = [{"order": order}] if key is None else entries.get(key)
            if not clients:
                raise FdError(errno.EOPNOTSUPP, f"{where}: the client of a connection not yet accepted is no fd of "
                                                "the tree: not supported")
            for e in clients:
                if oob is not None:
                    e["oob"] = oob
                if typ == socket.SOCK_STREAM and msgs:
                    e["sent"] = binascii.b2a_base64(b"".join(msgs), newline=False).decode()
                elif msgs:
                    e["sent"] = [binascii.b2a_base64(m, newline=False).decode() for m in msgs]
            for x in listeners if key is None else ():
                x.setdefault("gone", []).append(dict(clients[0]))
    finally:
        s.close()


def _read_all(a: socket.socket, where: str) -> tuple[list[bytes], dict | None]:
    """What waits on accepted socket `a`, message by message (a stream's in pieces), up to its end
    of file or what is there now; and a stream's urgent byte (MSG_OOB) not read yet, as {at: the
    bytes before its mark, byte: base64}, else None. A read stops at the mark, and one starting at
    it skips the byte: it is taken there with MSG_OOB (only the last byte sent so waits apart:
    an earlier one is ordinary data by then)."""
    msgs, total = [], 0
    oob = _urgent(a)
    # (a seqpacket socket's empty message is a message, its end of file none: with SO_PASSCRED on
    # our accepted end, each message carries its sender's credentials and the end of file none)
    stream = a.type == socket.SOCK_STREAM
    if not stream:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    while True:
        if oob is not None and "at" not in oob and _at_mark(a):
            oob = {"at": total, "byte": binascii.b2a_base64(a.recv(1, socket.MSG_OOB), newline=False).decode()}
        try:
            data, anc, flags, _ = a.recvmsg(1 << 17, socket.CMSG_SPACE(4) + socket.CMSG_SPACE(12), socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        creds = [c for c in anc if c[:2] == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)]
        anc = [c for c in anc if c not in creds]
        for _level, _kind, raw in anc:   # (fds in flight: close our copies, then refuse)
            for x in struct.unpack(f"{len(raw) // 4}i", raw[: len(raw) - len(raw) % 4]):
                os.close(x)
        if anc or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise FdError(errno.EOPNOTSUPP, f"{where}: a connection not yet accepted carries fds in "
                                            "flight, or a message over 128 KiB: not supported")
        if not data and (stream or not creds):
            break
        if len(msgs) >= unix_queue.MAX_MSGS:
            raise FdError(errno.EOPNOTSUPP, f"{where}: over {unix_queue.MAX_MSGS} messages sent on a connection "
                                            "not yet accepted: too many")
        total += len(data)
        if total > MAX_DATA:
            raise FdError(errno.EOPNOTSUPP, f"{where}: over {MAX_DATA} bytes sent on a connection not "
                                            "yet accepted: too many")
        msgs.append(data)
    if oob is not None and "at" not in oob:
        raise FdError(errno.EOPNOTSUPP, f"{where}: the urgent byte (MSG_OOB) sent on a connection not yet accepted "
                                        "was not found at its mark: not supported")
    return msgs, oob


def _urgent(a: socket.socket) -> dict | None:
    """{} when a byte sent with MSG_OOB waits apart on stream socket `a` (a peek of it; EINVAL: none,
    or SO_OOBINLINE; EOPNOTSUPP: a kernel without it, or not a stream), else None."""
    if a.type != socket.SOCK_STREAM:
        return None
    try:
        a.recv(1, socket.MSG_OOB | socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.EAGAIN):
            return None
        raise
    return {}


def _at_mark(a: socket.socket) -> bool:
    """Whether the next byte of `a` is its urgent data's mark (SIOCATMARK)."""
    import fcntl
    return struct.unpack("i", fcntl.ioctl(a.fileno(), _SIOCATMARK, b"\0\0\0\0"))[0] != 0


def deliver(r: RestoreFd, e: dict) -> None:
    """Send the datagrams queued on named socket `e` (made by now) to it again, in order, each from
    its sender: the tree's restored socket of that name, or one fresh unbound socket. A path name
    is reached through its socket file on the restored mount (a /proc magic link from here); an
    abstract one from the stand-in, in the socket's network namespace."""
    named = r.state.get("unix-senders", {})
    who: list[int] = []
    senders: list[int] = []
    for sid in e.get("senders") or [None] * len(e["msgs"]):
        if sid is None:
            who.append(-1)
            continue
        if isinstance(sid, dict):   # (a name no socket holds: bound again by a fresh one, `_resend`)
            who.append(sid["abstract"])
            continue
        if sid not in named:
            raise FdError(errno.EINVAL, f"sender {sid} of a queued datagram is no socket of the image")
        if named[sid] not in senders:
            senders.append(named[sid])
        who.append(senders.index(named[sid]))
    inflight = unix_queue.open_inflight(r, e["msgs"])
    try:
        if "abstract" in e:
            r.standin("deliver", {"to": e["abstract"], "msgs": e["msgs"], "who": who, "n": len(senders)},
                      senders + inflight)
            return
        from engine.fds import unix_ghost
        at = unix_ghost.sock_file(r, e)
        cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            os.fchdir(r.proc)
            _resend(f"self/fd/{at}", e["msgs"], who, senders, inflight)
        finally:
            os.fchdir(cwd)
            os.close(cwd)
            os.close(at)
    finally:
        for x in inflight:
            os.close(x)

def deliver_in(args, fds):
    """In the stand-in: _resend to an abstract name of its network namespace."""
    n = args["n"]
    _resend(b"\0" + binascii.a2b_base64(args["to"]), args["msgs"], args["who"], fds[:n], fds[n:])
    return None, []

def _bound_to(name: str, socks: dict) -> socket.socket:
    """A fresh datagram socket bound to abstract name `name` (base64), one per name (`socks`)."""
    if name not in socks:
        s = socks[name] = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 2 * MAX_DATA)
        except OSError:
            pass
        s.bind(b"\0" + binascii.a2b_base64(name))
    return socks[name]


def _resend(to, msgs, who: list, senders: list[int], inflight: list[int]) -> None:
    """Send each of `msgs` to address `to` from senders[who[i]], or (-1) from a fresh unbound socket,
    or (an abstract name, base64) from a fresh socket bound to it, closed at the end (the receiver
    reads that name still); the fds in flight are taken in order from `inflight`. Never blocks: a
    queue that does not take them all (a smaller net.unix.max_dgram_qlen here) is an error."""
    fresh = None
    named: dict = {}
    rest = list(inflight)
    try:
        for m, w in zip(msgs, who, strict=True):
            if isinstance(w, str):
                s = socket.socket(fileno=os.dup(_bound_to(w, named).fileno()))
            elif w < 0:
                if fresh is None:
                    fresh = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    try:   # (what it sent stays charged to it until read: room for the whole queue)
                        fresh.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 2 * MAX_DATA)
                    except OSError:
                        pass
                s = socket.socket(fileno=os.dup(fresh.fileno()))
            else:
                s = socket.socket(fileno=os.dup(senders[w]))
            with s:
                data, fds = (m["data"], m["fds"]) if isinstance(m, dict) else (m, ())
                mine, rest = rest[:len(fds)], rest[len(fds):]
                try:
                    if mine:
                        # (not socket.send_fds: Python 3.11's drops its flags and address)
                        s.sendmsg([binascii.a2b_base64(data)],
                                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(mine)}i", *mine))],
                                  socket.MSG_DONTWAIT, to)
                    else:
                        s.sendto(binascii.a2b_base64(data), socket.MSG_DONTWAIT, to)
                except BlockingIOError:
                    raise FdError(errno.EAGAIN, "its queue took fewer datagrams than were queued at dump "
                                                "(net.unix.max_dgram_qlen, or the sender's buffer)") from None
    finally:
        if fresh is not None:
            fresh.close()
        for x in named.values():
            x.close()
