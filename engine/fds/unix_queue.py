"""What is queued on a unix socket and the fds in flight with it.

Dump peeks the messages of a datagram or seqpacket socket with a peek offset (their bounds kept)
and describes each fd in flight as a file or FIFO on a mount of the tree, a pipe, a memfd (its
object: name, content, seals), an eventfd, signalfd or timerfd (their state, as their kinds dump
it), or an epoll whose targets are ends of the pair it waits on (or any, when a process of the tree
holds it too); restore opens those again and sends the queue from the peer, one message a send. An fd
in flight that is the same open file description as a process's fd or another fd in flight (kept
and sent, sent twice) names it ("desc", FdTable.mark_shared) and is sent again as that description.
"""

from __future__ import annotations

import binascii   # (base64's own calls, without base64.py: it imports re)
import errno
import os
import socket
import stat
import struct

from engine import kernel
from engine.fds import DumpFd, FdError, RestoreFd, unix_bind


MAX_DATA = 1 << 22


SO_PEEK_OFF = 42


MAX_MSGS = 4096


SO_PASSPIDFD = 76
SO_SNDBUFFORCE = 32   # (socket has no name for it)
SCM_PIDFD = 4   # (the control message SO_PASSPIDFD adds: the sender's pidfd)


def peek_messages(s: socket.socket, d, inflight: int, senders: list | None = None, selves: dict | None = None) -> list:
    """`_peek_messages` with SO_PASSPIDFD off for the peek (set back after): on, every message
    peeked would carry a pidfd of its sender, installed in the dumper, ancillary data the image
    keeps not (a queued message was refused as one "with other ancillary data than fds"). Restored
    messages carry the restorer's credentials, as with SO_PASSCRED."""
    try:
        on = s.getsockopt(socket.SOL_SOCKET, SO_PASSPIDFD)
    except OSError:
        on = 0   # (a kernel without it: Linux 6.5)
    if on:
        s.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 0)
    try:
        return _peek_messages(s, d, inflight, senders, selves)
    finally:
        if on:
            s.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, on)


def _peek_messages(s: socket.socket, d, inflight: int, senders: list | None = None, selves: dict | None = None) -> list:
    """The messages queued on a datagram or seqpacket socket, in order and with their bounds, read
    without consuming them: with a peek offset (SO_PEEK_OFF) each MSG_PEEK returns the next one
    (the socket's own peek offset is put back). Each is its data (base64), or {data, fds} when it
    carries fds (SCM_RIGHTS, `inflight` of them in all): a peek hands us copies of those, each
    described as an fd on a file of the tree's mounts (inflight_entry). With `senders`, the
    sender's name of each message is appended to it ({} for an unbound sender). `selves`: {socket
    inode: end} of the pair `s` is an end of, whose ends in flight on it are entries of their own
    (inflight_entry)."""
    saved = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    # Past the last message, a seqpacket socket whose peer is gone returns 0 bytes (its end of
    # file), as an empty message would: with SO_PASSCRED set for the peek, every message carries
    # its sender's credentials (dropped here) and the end of file none.
    creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_SEQPACKET \
        and not s.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
    stream = s.type == socket.SOCK_STREAM
    if creds:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    out: list = []
    total = nfds = 0
    # A peek at an offset passes over an empty message once it has been peeked at (the kernel's
    # skb->peeked: a program's MSG_PEEK, the runner's, an earlier dump's): an empty message heading
    # the queue was lost, and a datagram pair whose first message was empty (FIONREAD 0) lost its
    # whole queue. A peek with no offset returns the head whatever it is: the first peek takes it
    # so (and marks an empty one peeked: the walk at offsets after it passes over it).
    head = not stream
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1 if head else 0)
        while True:
            try:
                data, anc, flags, _addr = _recv_peek(s)
            except BlockingIOError:
                break
            real = [c for c in anc if creds and is_creds(c)]
            if creds and not real and not data and not anc:
                break   # (the end of file)
            anc = [c for c in anc if c not in real]
            got = passed_fds(anc)
            if head:
                head = False
                s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
                if data:   # (not empty: the walk from offset 0 gives it)
                    for fd in got:
                        os.close(fd)
                    continue
            try:
                refuse_creds(anc, d.where)
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or any(
                        level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS for level, kind, _ in anc):
                    raise FdError(errno.EOPNOTSUPP, f"{d.where}: a queued message over 128 KiB, or with other "
                                                    "ancillary data than fds: not supported")
                msg = binascii.b2a_base64(data, newline=False).decode()
                if got:
                    msg = {"data": msg, "fds": [inflight_entry(d, fd, selves) for fd in got]}
                out.append(msg)
                if senders is not None:
                    senders.append(unix_bind.name_of(_addr))
            finally:
                for fd in got:
                    os.close(fd)
            nfds += len(got)
            total += len(data)
            if not data and stream:
                # An empty segment of a stream: the queue's last one when it carries fds, which it is
                # when it brings the count of fds in flight to the kernel's. (A datagram or seqpacket
                # socket's empty messages are messages: kept.)
                if got and nfds == inflight:
                    break
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: an empty message queued: not supported")
            if len(out) > MAX_MSGS or total > MAX_DATA:
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: more than {MAX_MSGS} messages or {MAX_DATA} bytes "
                                                "queued: too many")
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, saved)
        if creds:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
    if nfds != inflight:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: {inflight} fds in flight, {nfds} found in its queue")
    return out


def refuse_creds(anc: list, where: str) -> None:
    """Refuse a queued message that carries its sender's credentials (its reader set SO_PASSCRED,
    as journald's and sd_notify sockets do): restore would send it with the restorer's."""
    if any(is_creds(c) for c in anc):
        raise FdError(errno.EOPNOTSUPP, f"{where}: messages queued on a socket whose reader set SO_PASSCRED (each "
                                        "carries its sender's credentials, which restore cannot give it): not "
                                        "supported; let the program read its queue first")


def is_creds(cmsg: tuple) -> bool:
    """Whether ancillary data item `cmsg` (level, type, data) is a sender's credentials (SCM_CREDENTIALS)."""
    return cmsg[:2] == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)


def refuse_passcred_queue(s: socket.socket, c: int, where: str) -> None:
    """`refuse_creds` before the stop: datagram or seqpacket socket `s` (our copy `c`) with
    SO_PASSCRED set and a message waiting (a peek: moves nothing; the tree runs)."""
    if s.type != socket.SOCK_STREAM and s.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) and waiting(s, c):
        refuse_creds([(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, b"")], where)


def passed_fds(anc: list, kind: int = socket.SCM_RIGHTS) -> list[int]:
    """The fds a received message's ancillary data `anc` handed us as `kind` (SCM_RIGHTS, SCM_PIDFD)."""
    return [fd for level, k, raw in anc if level == socket.SOL_SOCKET and k == kind
            for fd in struct.unpack(f"{len(raw) // 4}i", raw[: len(raw) - len(raw) % 4])]


def _recv_peek(s: socket.socket):
    return s.recvmsg(1 << 17, socket.CMSG_SPACE(253 * 4) + socket.CMSG_SPACE(12),
                     socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)


# Kinds whose whole state their fdinfo gives: dumped from our copy of one in flight as from the
# tree's fds, by the kind itself.
STATE_KINDS = ("eventfd", "signalfd", "timerfd")
INFLIGHT_KINDS = ("file", "fifo", "pipe", "epoll", "memfd") + STATE_KINDS
# The object kind an fd in flight of each kind names (`obj`).
INFLIGHT_OBJECTS = {"fifo": "pipe", "pipe": "pipe", "memfd": "memfd"}
# An end of the very pair whose queue it waits on (CRIU's scm06: a datagram pair's ends sent over each
# other): {kind, end}, sent again as that end of the new pair, the same description.
PAIR_END = "pair_end"


def inflight_kind(d, fd: int, target: str, mode: int, selves=()):
    """The kind of our copy `fd` of an fd in flight on socket `d`, or FdError when no entry of
    INFLIGHT_KINDS describes it (nor is it an end of the pair `d` is on: `selves`, their inodes)."""
    from engine import fds as kinds
    if stat.S_ISSOCK(mode) and os.fstat(fd).st_ino in selves:
        return None
    kind = kinds.classify(target, mode)
    if kind is None or kind.name not in INFLIGHT_KINDS:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: an fd in flight ({target}): only files, FIFOs, pipes, "
                                        "memfds, eventfds, signalfds, timerfds and epolls in flight are supported")
    if kind.name == "epoll" and not held(d, fd):   # (refused unless each target is an end of this pair)
        from engine.fds import epoll
        epoll.inflight_targets(fd, f"{d.where}: an fd in flight ({target})", selves)
    if kind.name == "memfd":   # (its size)
        kind.precheck(_Copy(fd, target, f"{d.where}: an fd in flight ({target})", {}))
    return kind


def held(d, fd: int) -> bool:
    """Whether our copy `fd` of an fd in flight is the same open file description as an fd a process
    of the tree holds (d.scratch["pids"], else d.pid): kcmp KCMP_FILE among those on its inode. An
    epoll's so held is restored by that fd, its interest list with it (FdTable.mark_shared)."""
    from engine.fds import sys as fsys
    st = os.fstat(fd)
    for pid, n in _fd_index(d).get((st.st_dev, st.st_ino), ()):
        try:
            if fsys.same_file(pid, n, os.getpid(), fd):
                return True
        except OSError:
            continue
    return False


def _fd_index(d) -> dict:
    """{(dev, inode): [(pid, fd)]} of the fds of the tree's processes (d.scratch["pids"], else d.pid),
    read once a dump or check (kept in d.scratch under those pids), not once an fd in flight."""
    pids = tuple(d.scratch.get("pids") or (d.pid,))
    index = d.scratch.get(("fd_index", pids))
    if index is None:
        index = {}
        for pid in pids:
            for n, t in kernel.fd_stats(pid):
                index.setdefault((t.st_dev, t.st_ino), []).append((pid, n))
        d.scratch[("fd_index", pids)] = index
    return index


class _Copy:
    """Our copy of an fd in flight as a kind's dump hook sees an fd of the tree (pid, fd, target)."""

    def __init__(self, fd: int, target: str, where: str, objects: dict):
        self.pid, self.fd, self.target, self.where, self.objects = "self", fd, target, where, objects

    info = DumpFd.info   # (/proc/self/fdinfo/N: pid "self")


def refuse_head_inflight(d, s: socket.socket, selves=()) -> None:
    """Before the tree is stopped: refuse the fds in flight of the datagram at the head of socket `s`
    that `peek_messages` would refuse. A peek without a peek offset takes nothing, but marks an empty
    message peeked, which a later peek with an offset skips: only a head of some bytes (FIONREAD
    tells a datagram socket's head's length, a seqpacket socket's whole queue's) is peeked. A socket
    with its own peek offset is left to dump too (our peek would move it). On a stream (a socketpair's
    end) the head segment: a peek of its queued bytes stops after the first bytes that carried fds.
    `selves`: the inodes of the pair `s` is an end of (its ends in flight are kept)."""
    n = inq(s.fileno()) if s.type in (socket.SOCK_DGRAM, socket.SOCK_STREAM) else 0
    if not n or s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) >= 0:
        return
    try:
        _data, anc, _flags, _addr = s.recvmsg(1 if s.type == socket.SOCK_DGRAM else min(n, 1 << 17),
                                              socket.CMSG_SPACE(253 * 4),
                                              socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
    except BlockingIOError:
        return   # (read meanwhile)
    got, pidfds = passed_fds(anc), passed_fds(anc, SCM_PIDFD)
    try:
        for fd in got:
            inflight_kind(d, fd, os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_mode, selves)
    finally:
        for fd in got + pidfds:   # (SO_PASSPIDFD on: the peek gave us a pidfd of the sender too)
            os.close(fd)


def inflight_entry(d, fd: int, selves: dict | None = None) -> dict:
    """An fd in flight (our copy `fd`) as an fd entry of a file, a FIFO or a pipe. A file or FIFO is
    placed on the mount its fdinfo names, or, for a file deleted since, on the mount of the tree whose
    root it is (the FIFO systemd-nspawn binds over /proc/kmsg); a pipe names its pipe object, the one
    the tree's own fds on that pipe name (CRIU's scm00: an end sent, then closed by the sender); an end
    of the pair the queue is on (`selves`: {inode: end}) names that end (PAIR_END)."""
    target = os.readlink(f"/proc/self/fd/{fd}")
    st = os.fstat(fd)
    kind = inflight_kind(d, fd, target, st.st_mode, selves or {})
    if kind is None:   # (the pair's own description: its flags are its holders')
        return {"kind": PAIR_END, "end": (selves or {})[st.st_ino]}
    what = f"{d.where}: an fd in flight ({target})"
    info = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    entry = {"kind": kind.name, "flags": int(info["flags"], 8) & ~os.O_CLOEXEC, "pos": int(info["pos"])}
    keep_copy(d.scratch, fd, st, entry)
    if kind.name == "epoll":
        from engine.fds import epoll
        # (one a process holds too: its targets are that fd's, FdTable.mark_shared empties these)
        entry["targets"] = [] if held(d, fd) else epoll.inflight_targets(fd, what, selves or {})
        if epoll.quiet_with_edges(fd, entry["targets"]):
            entry["quiet"] = True   # (its taken edges stay taken: send_queue's `settle`)
        return entry
    if kind.name == "memfd" or kind.name in STATE_KINDS:
        # (a memfd's object: name, content and seals, shared with the tree's fds on it; an eventfd's
        # count, a signalfd's mask, a timerfd's clock and times)
        entry.update(kind.dump(_Copy(fd, target, what, d.objects)))
        return entry
    if kind.name == "file":
        entry["type"] = "dir" if stat.S_ISDIR(st.st_mode) else "sock" if stat.S_ISSOCK(st.st_mode) else "file"
    else:
        # Its pipe with the data it holds: an fd in flight may be all that keeps a FIFO's data.
        from engine.fds.pipe import pipe_object
        entry["obj"] = pipe_object(d.objects, f"/proc/self/fd/{fd}", kind.name)
        if kind.name == "pipe":
            return entry
    spaces = [(d.pid, d.mounts)] + list(d.elsewhere)
    mnt = int(info.get("mnt_id", 0))
    known = {m.mnt_id for _pid, mounts in spaces for m in mounts}
    if not target.endswith(kernel.DELETED) and mnt in known:
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


def keep_copy(scratch: dict, fd: int, st: os.stat_result, entry: dict) -> None:
    """Keep a copy of our `fd` (an fd in flight, its `entry`) until FdTable.mark_shared tells which
    description of the tree or in flight it is (its "desc"): one copy a description, found by kcmp
    KCMP_FILE (our own pid twice) among those on the same inode; the entries of one copy share it."""
    from engine.fdtable import INFLIGHT
    kept = scratch.get(INFLIGHT)
    if kept is None:
        return   # (not FdTable's dump: a check of the running tree keeps none)
    from engine.fds import sys as fsys
    slots = kept.setdefault((st.st_dev, st.st_ino), [])
    for slot in slots:
        if fsys.same_file(os.getpid(), slot[0], os.getpid(), fd):
            slot[1].append(entry)
            return
    import fcntl
    try:
        slots.append([fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0), [entry]])
    except OSError as e:
        if e.errno != errno.EMFILE:
            raise
        raise FdError(errno.EMFILE, "more descriptions in flight than dump may hold open to compare: raise "
                                    "its open files limit (ulimit -n) and dump again") from None


def queued_fds(processes: list[dict], objects: dict) -> list[dict]:
    """The fd entries in flight in the queues of the tree's unix sockets (processes' fd entries and
    socket pair objects), each once, the dicts themselves."""
    queues = [e.get("msgs") or () for p in processes for e in p["fds"] if e.get("kind") == "unix"]
    queues += [q for o in objects.values() if o.get("kind") == "unix" for q in o.get("msgs") or ()]
    return [f for q in queues for m in q if isinstance(m, dict) for f in m["fds"]]


def inflight_mounts(msgs: list) -> list[int]:
    """The mounts of the fds in flight in `msgs` (restore opens files on them)."""
    return sorted({f["mnt"] for m in msgs if isinstance(m, dict) for f in m["fds"] if "mnt" in f})


def _own_fds(m: dict) -> int:
    """How many of message `m`'s fds in flight are opened for it (not ends of its own pair)."""
    return sum(1 for f in m["fds"] if f["kind"] != PAIR_END)


def peek_stream(s: socket.socket, n: int, where: str) -> bytes:
    """The `n` bytes queued on stream socket `s`, read without consuming them. One read stops
    where the writer changes when the reader set SO_PASSCRED (the kernel glues no two writers'
    bytes: a parent's and its forked child's), so each peek goes on at a peek offset (SO_PEEK_OFF;
    the socket's own put back). Urgent data (MSG_OOB) is refused (refuse_oob)."""
    refuse_oob(s, where)
    saved = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    parts, got = [], 0
    try:
        while got < n:
            try:
                part = s.recv(n - got, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not part:
                break
            parts.append(part)
            got += len(part)
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, saved)
    if got != n:
        raise FdError(errno.EOPNOTSUPP, f"{where}: {n} bytes queued on a unix stream socket, {got} of them "
                                        "readable: not supported")
    return b"".join(parts)


def refuse_oob(s: socket.socket, where: str) -> None:
    """Refuse a unix stream socket with urgent data waiting (a byte sent with MSG_OOB, not read
    yet): every read stops at its mark, restore would queue it as ordinary data. A peek of it
    (MSG_OOB | MSG_PEEK) returns the byte; EINVAL: none waits (or SO_OOBINLINE), EOPNOTSUPP:
    a kernel without it."""
    try:
        s.recv(1, socket.MSG_OOB | socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.EAGAIN):
            return
        raise
    raise FdError(errno.EOPNOTSUPP, f"{where}: urgent data (a byte sent with MSG_OOB) waits on a unix stream "
                                    "socket: not supported (let the program read it, then dump)")


def inq(fd: int) -> int:
    """The bytes waiting to be read on socket `fd` (FIONREAD)."""
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def waiting(s: socket.socket, c: int) -> bool:
    """Does anything wait to be read on socket `s` (our copy `c`)? FIONREAD gives a datagram
    socket's first message's length only: 0 when that one is empty, as with none at all. So a
    datagram or seqpacket socket's head is peeked at (with no peek offset: an empty message
    peeked at before is passed over at an offset); a seqpacket socket's end of file is told from an
    empty message by SO_PASSCRED, set for the peek (a message carries credentials, it none)."""
    n = inq(c)
    if n or s.type == socket.SOCK_STREAM:
        return n > 0
    saved = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    seqpacket = s.type == socket.SOCK_SEQPACKET
    creds = seqpacket and not s.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
    if creds:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    try:
        data, anc, _flags, _addr = _recv_peek(s)
    except OSError:
        return False
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, saved)
        if creds:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
    for fd in passed_fds(anc):
        os.close(fd)
    return not seqpacket or bool(data) or any(is_creds(x) for x in anc)


def charged(typ: int, queue: list) -> int:
    """The send buffer memory (SIOCOUTQ) the messages `queue` (dumped, base64) take while queued,
    as this kernel counts it: sent from a scratch socket pair of type `typ`, a message's fds in
    flight left out (they are not charged to it: before session 33 a queue with any made this
    None, and an empty message hidden behind one was lost). A pair end's own SIOCOUTQ is its
    messages queued on its peer: more than those peeked means messages a peek passes over (empty
    ones peeked at before)."""
    a, b = socket.socketpair(socket.AF_UNIX, typ)
    try:
        a.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 25)   # (the whole queue fits)
        for m in queue:
            a.send(binascii.a2b_base64(m["data"] if isinstance(m, dict) else m), socket.MSG_DONTWAIT)
        return outq(a.fileno())
    finally:
        a.close()
        b.close()


def outq(fd: int) -> int:
    """The send buffer memory of socket `fd` taken by what it sent and nobody read (SIOCOUTQ)."""
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def send_queue(peer: socket.socket, queue, fds: list[int], ends=(), settle: list | None = None) -> list[int]:
    """Send `queue` (dumped messages) from `peer`, one message a send; the fds in flight are taken
    from the front of `fds` (received ones, which the stand-in closes), an end of the pair itself
    (PAIR_END) from `ends`, the new pair's. A quiet epoll in flight (its taken edges) goes to
    `settle` as (our copy, its targets' count), to take its events once the pair is all made
    (epoll.settle). Returns the fds left."""
    fds = list(fds)
    stream = peer.type == socket.SOCK_STREAM   # (a pair's segments, when fds were in flight on it)
    try:
        for i, m in enumerate(queue):
            if isinstance(m, dict):
                n = _own_fds(m)
                opened, fds = fds[:n], fds[n:]
                if len(opened) != n or (len(m["fds"]) > n and len(ends) != 2):
                    raise FdError(errno.EINVAL, "fewer fds in flight received than the queue carries")
                mine = [ends[f["end"]] if f["kind"] == PAIR_END else opened.pop(0) for f in m["fds"]]
                _arm(m["fds"], mine, ends, settle)
                data = binascii.a2b_base64(m["data"])
                sent = socket.send_fds(peer, [data], mine, socket.MSG_DONTWAIT)
                if stream:
                    send_all(peer, data[sent:])   # (a stream may take part of it: the fds went with the first)
            elif stream:
                send_all(peer, binascii.a2b_base64(m))
            else:
                peer.send(binascii.a2b_base64(m), socket.MSG_DONTWAIT)
    except BlockingIOError:
        # (one argument: the stand-in reports str(e), which would show an errno before it)
        raise FdError(f"its queue does not fit back: the socket takes {i} of its {len(queue)} messages") from None
    return fds


def _arm(entries: list, fds: list[int], ends, settle: list | None) -> None:
    """Register the targets of the epolls in flight among `entries` (our fds `fds`) on the new pair's
    `ends`; a quiet one's copy goes to `settle` (send_queue)."""
    for f, fd in zip(entries, fds):
        if f["kind"] == "epoll" and f.get("targets"):
            if len(ends) != 2:
                raise FdError(errno.EINVAL, "an epoll in flight watches an end of a socket pair, on a socket of none")
            from engine.fds import epoll
            epoll.arm_inflight(fd, f["targets"], ends)
            if f.get("quiet") and settle is not None:
                settle.append((os.dup(fd), len(f["targets"])))


def send_all(sock: socket.socket, data: bytes) -> None:
    """Queue stream bytes `data` on `sock`'s peer, never waiting for a reader (none comes before the
    tree runs: a hostile image's queue larger than the socket holds would block restore forever)."""
    done = 0
    try:
        while done < len(data):
            done += sock.send(data[done:], socket.MSG_DONTWAIT)
    except BlockingIOError:
        raise FdError(f"its queued bytes do not fit back: the socket takes {done} of {len(data)}") from None


def _open_one(sub: RestoreFd) -> int:
    """A new description for fd in flight `sub` (its kind's open)."""
    from engine import fds as kinds
    fd = kinds.lookup(sub.entry["kind"]).open(sub)
    if sub.entry["kind"] == "epoll" and sub.entry["flags"] & os.O_NONBLOCK:
        os.set_blocking(fd, False)
    return fd


def open_inflight(r: RestoreFd, msgs) -> list[int]:
    """Our fds on the files in flight in `msgs`, in order: new descriptions, or, for one with a
    "desc", the description a process's fd or an earlier fd in flight of it has (r.share). Their
    mounts must be among the entry's `mnts`, which the validator checked."""
    out: list[int] = []
    try:
        for m in msgs:
            if not isinstance(m, dict):
                continue
            for f in m["fds"]:
                if f["kind"] == PAIR_END:
                    continue   # (the new pair's own end: send_queue)
                if "mnt" in f and f["mnt"] not in r.entry.get("mnts", ()):
                    raise FdError(errno.EINVAL, f"{r.where}: an fd in flight on mount {f['mnt']}, not in its mnts")
                want = INFLIGHT_OBJECTS.get(f["kind"])
                if "obj" in f and r.objects.get(f["obj"], {}).get("kind") != want:
                    raise FdError(errno.EINVAL, f"{r.where}: an fd in flight names no {want} object {f['obj'][:40]!r}")
                sub = RestoreFd(entry={"fd": -1, **f}, objects=r.objects, state=r.state, open_at=r.open_at,
                                standin=r.standin, keep=r.keep, proc=r.proc, open_ghost=r.open_ghost)
                if "desc" in f and r.share is not None:
                    # (the description a process's fd or another fd in flight has: made once)
                    out.append(r.share(f["desc"], lambda sub=sub: _open_one(sub)))
                else:
                    out.append(_open_one(sub))
    except BaseException:
        for x in out:
            os.close(x)
        raise
    return out
