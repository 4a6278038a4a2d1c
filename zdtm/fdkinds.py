"""What the snapshot compares of fds that are not plain files, and which fds are one object.

`details` reads an fd's kind-specific state through a copy of it (pidfd_getfd:
the same open file description, read without consuming anything): buffered
bytes and capacity of a pipe or FIFO, eventfd counter, signalfd mask, timerfd
clock and interval (and whether it is armed, or fired unread: the time left moves), inotify
watches and the bytes of events waiting, epoll targets, memfd seals and size, a socket's family, type, name and state (and how many fds are in
flight on it), the bytes waiting in a pty at each end.
`sharing` names, per pipe/FIFO and per open file description held by more
than one fd, which processes (by their index in the sorted snapshot) and fd
numbers hold it.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import struct
import termios

from engine import kernel
from engine.fds import sys as fsys

_TFD = re.compile(r"^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)", re.M)


def _info(pid: int, fd: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            out.setdefault(key.strip(), value.strip())
    return out


def _copy(pid: int, fd: int) -> int:
    pidfd = kernel.pidfd_open(pid)
    try:
        return fsys.pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)


def _inq(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _socket(c: int) -> str:
    s = socket.socket(fileno=os.dup(c))
    try:
        fam = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        out = f"socket family={fam} type={typ}"
        if fam == socket.AF_UNIX:
            try:
                peer = s.getpeername()
            except OSError:
                peer = None
            out += f" name={s.getsockname()!r} listening={listening} connected={peer is not None}"
            if not listening:
                out += f" inq={_inq(c)}"
                if typ != socket.SOCK_STREAM:
                    out += f" head={_unix_head(s)}"
            else:   # (what its clients see of the server: the pid is named by zdtm/snapshot.py)
                from engine.fds import unix_bind
                pid, uid, gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                groups = ",".join(str(g) for g in unix_bind.listener_groups(s)) or "-"
                out += f" peercred=pid:{pid} ids={uid & 0xffffffff}:{gid & 0xffffffff} groups={groups}"
            from engine.fds import unix_opts   # (what the socket was set to: credentials passed, buffers...)
            out += " opts=" + ",".join(f"{k}:{v}" for k, v in sorted(unix_opts.read(s).items()))
        elif fam in (socket.AF_INET, socket.AF_INET6):
            out += " " + _inet(s)
        elif fam == socket.AF_PACKET:   # (type, protocol, device by name, options, filter)
            from engine.fds import inet_filter, inet_opts, packet
            dev, proto = s.getsockname()[:2]
            popts = ",".join(f"{k}:{s.getsockopt(packet.SOL_PACKET, n)}" for k, n in sorted(packet.OPTS.items()))
            opts = {k: v & ~1 if k in ("rcvbuf", "sndbuf") else v
                    for k, v in inet_opts.read(s, "packet", "packet").items()
                    if inet_opts.OPTS[k][0] == socket.SOL_SOCKET}
            out += (f" packet {packet.TYPES.get(typ, typ)} protocol={proto} dev={dev} popts={popts} opts="
                    + ",".join(f"{k}:{v}" for k, v in sorted(opts.items())) + f" filter={inet_filter.read(s, '')}")
            from engine.fds import inet_net   # (its owner, as packet_diag tells it)
            ns = inet_net.netns_fd(s.fileno())
            try:
                from engine import forkrun
                rec = forkrun.run(packet._diag_in, ns).get(os.fstat(s.fileno()).st_ino) or {}
            finally:
                os.close(ns)
            out += f" uid={rec.get('uid', '?')}"
            # (its rings' geometry, fanout group and memberships: what restore makes again)
            out += (f" rings={rec.get('rings')} fanout={s.getsockopt(packet.SOL_PACKET, packet.PACKET_FANOUT) & 0xffffffff:#x}"
                    f" mclist={rec.get('mclist')}")
        elif fam == socket.AF_NETLINK:
            # (protocol, port id, groups, peer: a restore binds the same port id again)
            raw = s.getsockopt(270, 9, 512)   # SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS
            groups = [32 * i + b + 1 for i, w in enumerate(struct.unpack(f"{len(raw) // 4}I", raw))
                      for b in range(32) if w >> b & 1]
            out += (f" protocol={s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)} name={s.getsockname()!r}"
                    f" groups={groups} peer={s.getpeername()!r}")
        return out
    finally:
        s.close()


def _unix_head(s: socket.socket) -> str:
    """The length of the first message queued on datagram or seqpacket socket `s`, peeked at with
    no peek offset ("-" none): FIONREAD gives 0 both for an empty first message and for none (a
    datagram pair whose first message was empty lost its whole queue so). Only the head: a peek
    marks an empty message peeked (skb->peeked), which a later peek at an offset passes over, so a
    walk over the queue here would make the dump lose the empty ones behind the head (a dump
    peeks the head with no offset too: engine/fds/unix_queue.py). With SO_PASSCRED on for the
    peek, a seqpacket socket's end of file (no credentials) is none. Fds in flight and pidfds a
    peek installs here are closed."""
    SO_PEEK_OFF, SO_PASSPIDFD = 42, 76
    saved = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    creds = s.type == socket.SOCK_SEQPACKET and not s.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
    try:
        pidfd = s.getsockopt(socket.SOL_SOCKET, SO_PASSPIDFD)
    except OSError:
        pidfd = 0
    if creds:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if pidfd:
        s.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 0)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
    try:
        data, anc, _flags, _addr = s.recvmsg(1 << 17, 4096, socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return "-"
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, saved)
        if creds:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
        if pidfd:
            s.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, pidfd)
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for fd in struct.unpack(f"{len(raw) // 4}i", raw[: len(raw) - len(raw) % 4]):
                os.close(fd)
    if creds and not data and not any(c[1] == socket.SCM_CREDENTIALS for c in anc):
        return "-"   # (the end of file)
    return str(len(data))


def _inet(s: socket.socket) -> str:
    """An inet socket: family, protocol, name, state (a listener's backlog and accept queue, a TCP
    connection's or a UDP socket's peer and waiting bytes; a TCP socket whose connection ended, its
    peer, unread bytes and whether an error waits), its options and its network namespace's lo.
    A TCP connection's waiting bytes (`inq`) are those sent to it that it has not read, in its
    receive queue or, when its other end is a socket of its namespace, still unsent in that one's
    send queue: how they split between the two is TCP's flow, which a restored receiver's window,
    computed afresh from its queue's memory, changes (CRIU's socket-tcp*-closing)."""
    from engine import forkrun
    from engine.fds import inet, inet_diag, inet_net, inet_opts, inet_proc
    fam = inet.FAMILIES[s.family]
    proto = inet.proto_of(s) or f"type{int(s.type)}"
    host, port = inet._name(s.getsockname())
    out = f"{fam} {proto} name={host}:{port}"
    table = {}
    if proto in ("tcp", "udp", "udplite", "ping", "raw"):
        ns = inet_net.netns_fd(s.fileno())
        try:   # (sock_diag, in its network namespace: shutdown directions, a connection's other end)
            table = forkrun.run(inet_diag._in, ns, True) if proto in ("tcp", *inet.UDPS) else \
                inet_proc.table_of(ns, s.family)
        finally:
            os.close(ns)
    if proto == "tcp":
        st, queued, backlog = inet._tcp_info(s)
        out += f" state={inet.TCP_STATES.get(st, st)}"
        if st == inet.TCP_LISTEN:
            out += f" backlog={backlog} queued={queued}"
        elif st == inet.TCP_SYN_SENT:   # (connecting: no peer name yet, sock_diag's)
            rec = table.get(os.fstat(s.fileno()).st_ino) or {}
            out += " peer={}:{}".format(*rec.get("remote", ("?", "?")))
        elif st != inet.TCP_CLOSE:   # (a connection: its other end, and the bytes nobody read yet)
            peer = inet._name(s.getpeername())
            ends = (inet.end_key(*peer), inet.end_key(host, port))
            other = next((r for r in table.values() if "local" in r and "remote" in r
                          and (inet.end_key(*r["local"]), inet.end_key(*r["remote"])) == ends), {})
            out += " peer={}:{} inq={}".format(*peer, _inq(s.fileno()) + other.get("notsent", 0))
        elif inet.peer_name(s) is not None:   # (one whose connection ended: its other end, unread bytes, error)
            out += " peer={}:{} inq={}".format(*inet.peer_name(s), _inq(s.fileno()))
            out += " error=pending" if inet.error_pending(s) else ""
    elif proto in inet.UDPS:
        try:
            out += " peer={}:{}".format(*inet._name(s.getpeername()))
        except OSError:
            pass
        out += f" inq={_inq(s.fileno())}"
    elif proto in ("ping", "raw"):   # (connected to port 0: no getpeername, /proc/net's state)
        rec = table.get(os.fstat(s.fileno()).st_ino) or {}
        if rec.get("state") == inet_proc.TCP_ESTABLISHED:
            out += " peer={}:{}".format(*rec["remote"])
        # (not what waits on it: a live ping reads its replies as they come, a restored one never;
        # the tests read them)
    if proto in ("tcp", "udp", "udplite", "ping", "raw"):
        # (buffer sizes as a program can set them: TCP's autotuning of a connection's gives odd ones too)
        opts = {k: v & ~1 if k in ("rcvbuf", "sndbuf") else v for k, v in inet_opts.read(s, fam, proto, inet.unconnected(s, proto)).items()}
        out += " opts=" + ",".join(f"{k}:{v}" for k, v in sorted(opts.items()))
        rec = table.get(os.fstat(s.fileno()).st_ino)
        out += f" shutdown={rec['shutdown'] if rec else '?'} uid={rec['uid'] if rec else '?'}"
        from engine.fds import FdError, inet_filter
        try:   # (its socket filter's instructions)
            out += f" filter={inet_filter.read(s, '')}"
        except FdError:
            out += " filter=ebpf"
    req = fcntl.ioctl(s.fileno(), inet_net.SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
    return out + f" lo={'up' if struct.unpack_from('H', req, 16)[0] & inet_net.IFF_UP else 'down'}"


def _fanotify(pid: int, fd: int) -> str:
    """A fanotify group: its flags and its marks (kind, mark flags, masks; a mount mark by its
    mount point, an inode mark by its inode number's path-free identity: device and inode are
    renamed by a restore, so only the mark's kind and masks are compared for those)."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        text = f.read()
    with open(f"/proc/{pid}/mountinfo") as f:
        points = {int(line.split()[0]): line.split()[4] for line in f}
    group = re.search(r"^fanotify flags:(\S+) event-flags:(\S+)", text, re.M)
    marks = []
    for line in text.splitlines():
        if not line.startswith("fanotify ") or line.startswith("fanotify flags:"):
            continue
        f = dict(x.split(":", 1) for x in line.split()[1:])
        kind = "mount@" + points.get(int(f["mnt_id"], 16), "?") if "mnt_id" in f else "inode" if "ino" in f else "fs"
        marks.append(f"{kind}:{f['mflags']}:{f['mask']}:{f['ignored_mask']}")
    return f"flags={group[1] if group else '?'} event-flags={group[2] if group else '?'} marks=" + ",".join(sorted(marks))


def async_owner(pid: int, fd: int, flags: int) -> str:
    """The signal owner and signal of fd `fd` of `pid` (status `flags`): "async-owner=pid:N sig=S", N a
    host pid (zdtm/snapshot.py names its process); '' for none, no signal and no O_ASYNC."""
    from engine import fown
    try:
        c = _copy(pid, fd)
    except OSError as e:
        return f"async-owner=unreadable ({type(e).__name__})"
    try:
        return fown.owner_text(c, flags)
    finally:
        os.close(c)


def _tun(pid: int, fd: int) -> str:
    """A /dev/net/tun fd: the device it is attached to (fdinfo's iff) and its TUNGETIFF flags, but
    IFF_NOFILTER (0x1000, IFF_NO_PI's bit too: the device's packet information is `ip -d link`'s)."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        iff = re.search(r"^iff:\s*(\S*)", f.read(), re.M)
    c = _copy(pid, fd)
    try:
        flags = struct.unpack_from("=H", fcntl.ioctl(c, 0x800454D2, bytes(40)), 16)[0] & ~0x1000
    except OSError:
        flags = None   # (not attached)
    finally:
        os.close(c)
    return f"tun iff={iff[1] if iff else '?'} tunflags={'-' if flags is None else hex(flags)}"


def details(pid: int, fd: int, target: str) -> str:
    """The compared state of fd `fd` of `pid` beyond path, flags, offset and mount ('' for files)."""
    try:
        if target.startswith(("pipe:", "socket:", "anon_inode:")) or target.startswith("/memfd:"):
            info = _info(pid, fd)
            if target == "anon_inode:[eventfd]":
                return f"count={int(info['eventfd-count'], 16)} semaphore={info.get('eventfd-semaphore', '?')}"
            if target == "anon_inode:[signalfd]":
                return f"sigmask={info['sigmask']}"
            if target == "anon_inode:[timerfd]":
                # armed, or fired since and not read (stand-ins never read): a one-shot timer close to
                # its expiry at dump fires before the restored tree is looked at (journald's did)
                armed = info["it_value"] != "(0, 0)" or int(info.get("ticks", "0")) > 0
                return f"clockid={info['clockid']} interval={info['it_interval']} armed={armed}"
            if target == "anon_inode:inotify":
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    ws = sorted((int(m[1], 16), m[2]) for m in re.finditer(r"inotify wd:([0-9a-f]+) .*?mask:([0-9a-f]+)",
                                                                         f.read()))
                c = _copy(pid, fd)
                try:   # (the bytes of events waiting to be read: FIONREAD reads none)
                    queued = _inq(c)
                finally:
                    os.close(c)
                return "watches=" + ",".join(f"{wd}:{mask}" for wd, mask in ws) + f" queued={queued}"
            if target == "anon_inode:[pidfd]":
                return f"pidfd={info.get('Pid', '?')}"   # a host pid: zdtm/snapshot.py names its process
            if target == "anon_inode:[fanotify]":
                return _fanotify(pid, fd)
            if target == "anon_inode:[eventpoll]":
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    targets = sorted((int(m[1]), m[2], m[3]) for m in _TFD.finditer(f.read()))
                return "targets=" + ",".join(f"{t}:{e}:{d}" for t, e, d in targets)
        c = None
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        import stat as st_mod
        if st_mod.S_ISCHR(st.st_mode) and _is_pty(st.st_rdev):
            return _pty(pid, fd)
        if st_mod.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (10, 200):
            return _tun(pid, fd)
        if not (target.startswith(("pipe:", "socket:")) or target.startswith("/memfd:") or st_mod.S_ISFIFO(st.st_mode)):
            return ""
        c = _copy(pid, fd)
        try:
            if target.startswith("socket:"):
                # (fds in flight, sent with SCM_RIGHTS and not received yet: fdinfo's count)
                inflight = info.get("scm_fds")
                return _socket(c) + (f" scm_fds={inflight}" if inflight is not None else "")
            if target.startswith("/memfd:"):
                return f"seals={fcntl.fcntl(c, fsys.F_GET_SEALS)} size={os.fstat(c).st_size}"
            return f"bytes={_inq(c)} size={fcntl.fcntl(c, fsys.F_GETPIPE_SZ)}"
        finally:
            os.close(c)
    except (OSError, KeyError) as e:
        return f"unreadable ({type(e).__name__})"


_TIOCGPTPEER = 0x5441


def _is_pty(rdev: int) -> bool:
    return (os.major(rdev), os.minor(rdev)) == (5, 2) or 136 <= os.major(rdev) < 144


def _pty(pid: int, fd: int) -> str:
    """The bytes waiting in a pty, seen from this end: to be read here (FIONREAD: output on a
    master, input on a slave) and not sent yet (TIOCOUTQ); a loss at C/R shows. And the terminal's
    settings, which restore gives back (engine/fds/pty.py): termios and window size (a master's
    ioctls read its slave's: the one terminal both ends see)."""
    c = _copy(pid, fd)
    try:
        try:
            outq = struct.unpack("i", fcntl.ioctl(c, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
            return f"tty inq={_inq(c)} outq={outq}" + _pty_node(c) + _pty_settings(c)
        except OSError:
            return "tty hung-up"   # (a slave whose master is gone: EIO)
    finally:
        os.close(c)


def _pty_settings(c: int) -> str:
    """" termios=IFLAG,OFLAG,CFLAG,LFLAG,ISPEED,OSPEED cc=HEX winsize=ROWSxCOLS,XPIXxYPIX" of the pty fd `c`."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(c)
    chars = bytes(x if isinstance(x, int) else ord(x) for x in cc).hex()
    rows, cols, xpix, ypix = struct.unpack("HHHH", fcntl.ioctl(c, termios.TIOCGWINSZ, b"\0" * 8))
    return (f" termios={iflag:o},{oflag:o},{cflag:o},{lflag:o},{ispeed},{ospeed} cc={chars}"
            f" winsize={rows}x{cols},{xpix}x{ypix}")


def _pty_node(c: int) -> str:
    """" node=MODE UID:GID" of the slave node of the pty fd `c` is an end of (a login, getty or
    sshd chowns it to its user, mode 620 group tty; a pty opened by a user is that user's), read
    through an O_PATH peer (TIOCGPTPEER: nothing is opened); '' when there is none to read."""
    st = os.fstat(c)
    if (os.major(st.st_rdev), os.minor(st.st_rdev)) == (5, 2):
        try:
            peer = fcntl.ioctl(c, _TIOCGPTPEER, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return ""
        try:
            st = os.fstat(peer)
        finally:
            os.close(peer)
    return f" node={st.st_mode & 0o7777:o} {st.st_uid}:{st.st_gid}"


def sharing(pids: list[int]) -> str:
    """Lines naming the fds (P<index>:<fd>) that are one pipe/FIFO, and those that are one open
    file description; `pids` in the snapshot's process order."""
    by_inode: dict[tuple[int, int], list[tuple[int, int, int, str]]] = {}
    for i, pid in enumerate(pids):
        try:
            names = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
        except OSError:
            continue
        for name in names:
            try:
                st = os.stat(f"/proc/{pid}/fd/{name}")
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            by_inode.setdefault((st.st_dev, st.st_ino), []).append((i, pid, int(name), target))
    lines = _socket_pairs(by_inode)
    for members in by_inode.values():
        target = members[0][3]
        if target.startswith("pipe:") or (target.startswith("/") and _is_fifo(members[0][1], members[0][2])):
            if len(members) > 1:
                lines.append("pipe " + " ".join(sorted(f"P{i}:{fd}" for i, _, fd, _ in members)))
        if len(members) < 2:
            continue
        groups: list[list[tuple[int, int, int, str]]] = []
        for m in members:
            for g in groups:
                try:
                    if fsys.same_file(g[0][1], g[0][2], m[1], m[2]):
                        g.append(m)
                        break
                except OSError:
                    pass
            else:
                groups.append([m])
        for g in groups:
            if len(g) > 1:
                lines.append("description " + " ".join(sorted(f"P{i}:{fd}" for i, _, fd, _ in g)))
    return "\n".join(sorted(lines))


def _is_fifo(pid: int, fd: int) -> bool:
    import stat as st_mod
    try:
        return st_mod.S_ISFIFO(os.stat(f"/proc/{pid}/fd/{fd}").st_mode)
    except OSError:
        return False


def _socket_pairs(by_inode: dict) -> list[str]:
    """Lines "socketpair P0:3 | P1:4" for unix sockets held by the tree that are each other's peers,
    "connected P1:5 -> P0:3" for one connected to another that is not connected back, "shutdown
    P0:3 rdwr" for one shut down in a direction (sock_diag)."""
    from engine.fds import unix_diag
    socks = {}
    for (_, ino), members in by_inode.items():
        if members[0][3].startswith("socket:"):
            socks[ino] = members
    if not socks:
        return []
    diag: dict[int, dict] = {}
    for members in socks.values():
        pid = members[0][1]
        try:
            net = os.stat(f"/proc/{pid}/ns/net").st_ino
            if net not in diag:
                diag[net] = unix_diag.diag_in(pid)
            diag.setdefault("all", {}).update(diag[net])
        except OSError:
            continue
    lines = []
    table = diag.get("all", {})
    for ino, members in socks.items():
        shut = table.get(ino, {}).get("shutdown")
        if shut:   # (sk_shutdown: RCV_SHUTDOWN 1, SEND_SHUTDOWN 2; a peer's shutdown sets the other's)
            lines.append(" ".join(["shutdown", *sorted(f"P{i}:{fd}" for i, _, fd, _ in members),
                                   "rd" * (shut & 1) + "wr" * (shut >> 1 & 1)]))
        peer = table.get(ino, {}).get("peer")
        if peer not in socks:
            continue
        a = " ".join(sorted(f"P{i}:{fd}" for i, _, fd, _ in members))
        b = " ".join(sorted(f"P{i}:{fd}" for i, _, fd, _ in socks[peer]))
        if table.get(peer, {}).get("peer") != ino:
            # One-way (a datagram socket connected to a bound one): a line per direction, so the
            # inode order, which a restore need not keep, does not decide whether it is shown.
            lines.append(f"connected {a} -> {b}")
        elif ino < peer:
            lines.append("socketpair " + " | ".join(sorted((a, b))))
    return sorted(lines)
