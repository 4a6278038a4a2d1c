"""tun/tap fds: an open /dev/net/tun attached (TUNSETIFF) to a tun or tap device of one of the tree's
network namespaces (rootless podman's slirp4netns, VPN clients, qemu), or not attached yet.

Dump reads, on our copy of the fd, the device it is attached to and its flags (TUNGETIFF), the
device's network namespace (TUNGETDEVNETNS: the tree's, named as the image names it, never the
dumper's: the device itself is kept with the namespace's links, engine/netlinks.py and
engine/tundev.py), whether the queue is detached (IFF_DETACH_QUEUE), the device's persistence, vnet
header size and send buffer. Refused: a device of a namespace outside the tree or of the dumper's, a
socket filter on a tap queue (TUNATTACHFILTER: the program is in the process's memory), IFF_NAPI.

Restore opens the node again on its mount (like a file), in a child joined to the restored device's
namespace (a tun fd finds its device in the namespace it was opened in; the process holding it may
be in another, as slirp4netns is), attaches it with the flags the
restored device has, detaches the queue when it was, sets the vnet header size and send buffer,
and drops the device's persistence when it had none (engine/tundev.py made it persistent).
The frames waiting in the queue are not kept: the restored queue starts empty (IMAGE.md); nor is
the fd's position (the bytes read(2) and write(2) moved, which the device never looks at, and which
llseek cannot set).
"""

from __future__ import annotations

import errno
import fcntl
import os
from engine import rx
import socket
import stat
import struct

from engine import tundev
from engine.fds import FdError, FdKind, RestoreFd, register
from engine.imageformat import BOOL, INT, STR, F, pattern, rng

_NS_ID = rx.compile(r"^net-[0-9]{1,9}\Z")
_DEV = rx.compile(r"^[A-Za-z0-9_.:@+-]{1,15}\Z")   # (engine/netlinks.py's link names)


def _matches(target: str, mode: int) -> bool:
    return stat.S_ISCHR(mode) and target.startswith("/") and target.rsplit("/", 1)[-1] == "tun"


def _ns_name(d, ino: int) -> str | None:
    """The image name of the tree's network namespace `ino` ("net-N"), None when it is none of the tree's."""
    from engine import prestop
    names = d.scratch.get("tun_net_names")
    if names is None:
        names = d.scratch["tun_net_names"] = prestop.ns_names(list(d.scratch.get("pids") or ()), ("net",))
    return names.get(("net", ino))


def _read(d) -> dict:
    """The entry's fields of tun fd `d` ({} for an open not attached, or a node called tun that is
    not the tun device: reopened like any node); FdError for what restore cannot make."""
    c = d.copy()
    st = os.fstat(c)
    if (os.major(st.st_rdev), os.minor(st.st_rdev)) != (tundev.TUN_MAJOR, tundev.TUN_MINOR):
        return {}
    try:
        got = fcntl.ioctl(c, tundev.TUNGETIFF, bytes(40))
    except OSError as e:
        if e.errno == errno.EBADFD:
            return {}   # (opened, never attached)
        raise
    dev = got[:16].split(b"\0", 1)[0].decode(errors="replace")
    flags = struct.unpack_from("=H", got, 16)[0]
    what = f"{d.where}: attached to tun device {dev}"
    if flags & (tundev.IFF_NAPI | tundev.IFF_NAPI_FRAGS):
        raise FdError(errno.EOPNOTSUPP, f"{what}, made with IFF_NAPI, which restore does not make: not supported")
    try:
        ns = fcntl.ioctl(c, tundev.TUNGETDEVNETNS)
    except OSError as e:
        raise FdError(e.errno or errno.EIO, f"{what}: its network namespace (TUNGETDEVNETNS, Linux >= 5.2): "
                                            f"{e.strerror}") from None
    try:
        ino = os.fstat(ns).st_ino
    finally:
        os.close(ns)
    name = _ns_name(d, ino)
    if ino == os.stat("/proc/self/ns/net").st_ino or name is None:
        raise FdError(errno.EOPNOTSUPP, f"{what} of a network namespace that is not the tree's own (the dumper's, or "
                                        "one no process of the tree is in): restore makes only the tree's devices: "
                                        "not supported")
    if flags & tundev.IFF_TAP:
        fprog = fcntl.ioctl(c, tundev.TUNGETFILTER, bytes(16))
        if struct.unpack_from("=H", fprog)[0]:
            raise FdError(errno.EOPNOTSUPP, f"{what}, with a socket filter (TUNATTACHFILTER), which restore does not "
                                            "keep: not supported")
    sz = struct.unpack("=i", fcntl.ioctl(c, tundev.TUNGETVNETHDRSZ, bytes(4)))[0]
    sndbuf = struct.unpack("=i", fcntl.ioctl(c, tundev.TUNGETSNDBUF, bytes(4)))[0]
    return {"net": name, "dev": dev, "detached_queue": bool(flags & tundev.IFF_DETACH_QUEUE),
            "persist": bool(flags & tundev.IFF_PERSIST), "vnet_hdr_sz": sz, "sndbuf": sndbuf}


def _dump(d) -> dict:
    return _read(d)


def _precheck(d) -> None:
    _read(d)


def _attach_in(netfd: int, r: RestoreFd, flags: int, sock: int) -> None:
    """In a child: join the restored device's namespace, open the tun node there (on its restored
    mount, r.open_at: a tun fd belongs to the namespace it was opened in), attach it as the entry
    says, send it back on `sock`."""
    from engine import kernel, rtnl
    e = r.entry
    step = "joining its network namespace"
    try:
        kernel.setns(netfd, kernel.CLONE_NEWNET)
        step = "finding it"
        rec = _restored_record(e["dev"], rtnl)
        step = f"opening {e['path']}"
        fd = r.open_at(e["mnt"], e["path"], flags)
        st = os.fstat(fd)   # (no tun ioctl on another device an image names)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (tundev.TUN_MAJOR,
                                                                                            tundev.TUN_MINOR):
            raise OSError(errno.EINVAL, "not the tun device (10:200)")
        step = "attaching (TUNSETIFF)"
        fcntl.ioctl(fd, tundev.TUNSETIFF, tundev.ifreq(e["dev"], tundev.flags_of(rec)))
        step = "its queue, vnet header size, send buffer, persistence"
        if e["detached_queue"]:
            fcntl.ioctl(fd, tundev.TUNSETQUEUE, tundev.ifreq("", tundev.IFF_DETACH_QUEUE))
        fcntl.ioctl(fd, tundev.TUNSETVNETHDRSZ, struct.pack("=i", e["vnet_hdr_sz"]))
        fcntl.ioctl(fd, tundev.TUNSETSNDBUF, struct.pack("=i", e["sndbuf"]))
        if not e["persist"]:
            fcntl.ioctl(fd, tundev.TUNSETPERSIST, 0)   # (this fd holds the device now)
    except OSError as err:
        raise OSError(err.errno, f"{step}: {err.strerror or err}") from None
    s = socket.socket(fileno=os.dup(sock))
    try:
        socket.send_fds(s, [b"t"], [fd])
    finally:
        s.close()


def _restored_record(dev: str, rtnl) -> dict:
    """The tun record of device `dev` as restore made it in our namespace; OSError when there is no
    such tun device (TUNSETIFF would make one)."""
    index = socket.if_nametoindex(dev)
    for _t, msg in rtnl.dump(rtnl.RTM_GETLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if rtnl.IFINFO.unpack_from(msg)[2] == index:
            info = rtnl.attrs(rtnl.attrs(msg, rtnl.IFINFO.size).get(rtnl.IFLA_LINKINFO, b""))
            if rtnl.text(info.get(rtnl.IFLA_INFO_KIND)) == "tun":
                return tundev.info_of(rtnl.attrs(info.get(rtnl.IFLA_INFO_DATA, b"")), dev)
    raise OSError(errno.ENODEV, f"no tun device {dev} in the restored network namespace")


def _open(r: RestoreFd) -> int:
    e = r.entry
    flags = e["flags"] & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY | os.O_CLOEXEC) | os.O_CLOEXEC
    if "dev" not in e:
        return r.open_at(e["mnt"], e["path"], flags)
    from engine import forkrun
    try:
        netfd = r.ns_fd(e["net"]) if r.ns_fd is not None else None
        # (never the restorer's own namespace: a device of the host's is not the image's to attach to)
        own = os.stat("self/ns/net", dir_fd=r.proc) if r.proc >= 0 else os.stat("/proc/self/ns/net")
        if netfd is None or os.fstat(netfd).st_ino == own.st_ino:
            raise FdError(errno.EINVAL, f"{r.where}: network namespace {e['net']} is not one this restore made")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            forkrun.run(_attach_in, netfd, r, flags, theirs.fileno())
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        finally:
            ours.close()
            theirs.close()
    except (OSError, forkrun.ChildError) as err:
        raise FdError(getattr(err, "errno", None) or errno.EIO,
                      f"{r.where}: tun device {e['dev']}: {getattr(err, 'strerror', None) or err}") from None
    if len(fds) != 1:
        raise FdError(errno.EIO, f"{r.where}: the helper attaching tun device {e['dev']} sent no fd")
    return fds[0]


def _check(e: dict, what: str) -> None:
    from engine.image import _fail
    keys = ("net", "dev", "detached_queue", "persist", "vnet_hdr_sz", "sndbuf")
    if any(k in e for k in keys) and not all(k in e for k in keys):
        _fail(f"{what}: a tun fd attached to a device has all of {', '.join(keys)}")


register(FdKind(name="tun", matches=_matches, dump=_dump, open=_open, placed=True, order=40, precheck=_precheck,
                check=_check,
                refs=lambda e: [("namespace", e["net"], f"network namespace {e['net']}")] if "net" in e else [],
                fields={"net": F(STR, required=False, rule=pattern(_NS_ID, "a network namespace id like net-1")),
                        "dev": F(STR, required=False, rule=pattern(_DEV, "an interface name")),
                        "detached_queue": F(BOOL, required=False), "persist": F(BOOL, required=False),
                        "vnet_hdr_sz": F(INT, required=False, rule=rng(10, 2**31 - 1)),
                        "sndbuf": F(INT, required=False, rule=rng(1, 2**31 - 1))}))
