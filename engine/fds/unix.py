"""Unix sockets: socket pairs (both ends, queued stream data), unbound ones, abstract names and
names bound to a path, listening or not; any other family is refused naming the fd.

Sockets are made by the stand-in of the process that holds them (so they
belong to its network namespace, where abstract names live) and handed back
to the restorer, which gives the same description to every holder. A path
name is bound again by that stand-in, after it entered its restored root,
with the dumped name; the socket file left by the dumped tree (tar does not
keep sockets, so normally there is none) is replaced.

Peers come from sock_diag (NETLINK_SOCK_DIAG, one dump per network
namespace, read in a child that joins it). Not done yet: a socket connected
to a listening one (its peer is not its pair), queued datagrams, in-flight
fds (SCM_RIGHTS), a path name beneath an overmount or on a detached mount.
"""

from __future__ import annotations

import base64
import errno
import os
import socket
import struct

from engine.imageformat import INT, STR, F, path_rule
from engine.fds import FdError, FdKind, RestoreFd, register

SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_RQLEN = 1, 2, 4, 16
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN = 0, 1, 2, 4
TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}
MAX_DATA = 1 << 22


def _diag_all() -> dict[int, dict]:
    """{socket inode: {peer, backlog, vfs}} of every unix socket of our network namespace."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 4)  # NETLINK_SOCK_DIAG
    try:
        req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                          UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN, 0xFFFFFFFF, 0xFFFFFFFF)
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
    s = socket.socket(fileno=os.dup(c))
    try:
        fam = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        if fam != socket.AF_UNIX:
            what = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_NETLINK: "netlink",
                    socket.AF_PACKET: "packet"}.get(fam, f"family {fam}")
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: {what} sockets are not supported (only unix sockets)")
        if typ not in TYPES:
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: unix socket of type {typ} is not supported")
        ino = os.stat(f"/proc/{d.pid}/fd/{d.fd}").st_ino
        netns = os.stat(f"/proc/{d.pid}/ns/net").st_ino
        diag = d.scratch.setdefault(("unix", netns), None)
        if diag is None:
            diag = d.scratch[("unix", netns)] = _diag_in(d.pid)
        rec = diag.get(ino, {})
        out = {"type": TYPES[typ], **_name(s.getsockname())}
        if "path" in out and not out["path"].startswith("/"):
            raise FdError(errno.EOPNOTSUPP, f"{d.where}: unix socket bound to a relative path: not supported")
        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            out["listen"] = max(rec.get("wqueue", 128), 1)
            if rec.get("rqueue"):
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: listening unix socket with connections not yet "
                                                "accepted: not supported")
            return out
        peer = rec.get("peer")
        if peer:
            peer_rec = diag.get(peer, {})
            if peer_rec.get("peer") != ino:
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: unix socket connected to a socket that is not its "
                                                "pair (a named or listening one): not supported")
            a, b = sorted((ino, peer))
            obj = f"unixpair-{netns}-{a}-{b}"
            d.objects.setdefault(obj, {"kind": "unix", "type": out["type"], "data": ["", ""]})
            end = 0 if ino == a else 1
            out.update({"obj": obj, "end": end})
            if out["type"] == "stream":
                n = _inq(c)
                if n > MAX_DATA:
                    raise FdError(errno.EOPNOTSUPP, f"{d.where}: {n} bytes queued: too many")
                if n:
                    data = s.recv(n, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    d.objects[obj]["data"][end] = base64.b64encode(data).decode()
            elif _inq(c):
                raise FdError(errno.EOPNOTSUPP, f"{d.where}: queued {out['type']} messages: not supported yet")
        return out
    finally:
        s.close()


def _inq(fd: int) -> int:
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _check(entry: dict, what: str) -> None:
    from engine.image import _fail, check_abs_path
    if entry.get("type") not in TYPES.values():
        _fail(f"{what}: bad unix socket type")
    if "path" in entry:
        check_abs_path(entry["path"], what)
        if len(entry["path"]) > 107:
            _fail(f"{what}: socket path too long")
    if "listen" in entry and (not isinstance(entry["listen"], int) or not 0 < entry["listen"] < 1 << 20):
        _fail(f"{what}: bad backlog")
    if "obj" in entry and entry.get("end") not in (0, 1):
        _fail(f"{what}: bad socket pair end")


def _check_object(obj: dict, what: str) -> None:
    from engine.image import _fail
    if obj.get("type") not in TYPES.values() or not isinstance(obj.get("data"), list) or len(obj["data"]) != 2 \
            or not all(isinstance(x, str) and len(x) <= MAX_DATA * 4 // 3 + 4 for x in obj["data"]):
        _fail(f"{what}: bad unix socket pair")


_TYPE_NO = {v: k for k, v in TYPES.items()}


def _make(args, fds):
    """In the stand-in: a socket (or a pair) of its network namespace, bound and listening as dumped."""
    spec = args
    if spec.get("pair"):
        a, b = socket.socketpair(socket.AF_UNIX, _TYPE_NO[spec["type"]])
        out = [a.detach(), b.detach()]
        for end, data in enumerate(spec.get("data") or ()):
            if data:
                os.write(out[1 - end], base64.b64decode(data))   # what `end` will read, sent by its peer
        return None, out
    s = socket.socket(socket.AF_UNIX, _TYPE_NO[spec["type"]])
    try:
        if "abstract" in spec:
            s.bind(b"\0" + base64.b64decode(spec["abstract"]))
        elif "path" in spec:
            try:
                import stat
                if stat.S_ISSOCK(os.lstat(spec["path"]).st_mode):
                    os.unlink(spec["path"])   # a dead socket's node: bind makes a new one
            except FileNotFoundError:
                pass
            s.bind(spec["path"])
        if "listen" in spec:
            s.listen(spec["listen"])
        return None, [s.detach()]
    finally:
        s.close()


def _open(r: RestoreFd) -> int:
    e = r.entry
    if "obj" in e:
        st = r.state.get(e["obj"])
        if st is None:
            obj = r.objects[e["obj"]]
            st = r.state[e["obj"]] = r.standin("make", {"pair": True, "type": obj["type"], "data": obj["data"]})
            r.keep.extend(st)
        fd = os.dup(st[e["end"]])
    else:
        spec = {k: e[k] for k in ("type", "abstract", "path", "listen") if k in e}
        fd = r.standin("make", spec)[0]
    if e["flags"] & os.O_NONBLOCK:
        os.set_blocking(fd, False)
    return fd


register(FdKind(name="unix", matches=lambda t, m: t.startswith("socket:["), dump=_dump, open=_open,
                check=_check, check_object=_check_object, standin={"make": _make}, fields={"type": F(STR), "abstract": F(STR, required=False), "path": F(STR, required=False, rule=path_rule), "listen": F(INT, required=False), "end": F(INT, required=False)}))
