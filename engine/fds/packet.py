"""Packet sockets (AF_PACKET, SOCK_RAW or SOCK_DGRAM: dhclient's, systemd-networkd's, tcpdump's, an
LLDP agent's) of a network namespace the tree owns (the same rule as inet sockets:
engine/fds/inet_net.py): their protocol (an ethertype), the device they are bound to, by NAME (the
restored namespace's device of that name, whatever its index: lo, or a device restore makes there),
their PACKET_* options (version, reserve, auxdata, origdev, vnet_hdr, loss, timestamp, qdisc_bypass,
ignore_outgoing), SOL_SOCKET options (engine/fds/inet_opts.py's) and classic socket filter
(engine/fds/inet_filter.py).

Its rings (PACKET_RX_RING, PACKET_TX_RING: their geometry, made again after its version and
reserve, once bound), its fanout group (PACKET_FANOUT: id, mode and flags, joined again once
bound: the namespace is restore's, so the group's other members are the tree's sockets that join
it too) and its memberships (PACKET_ADD_MEMBERSHIP: promiscuous, all-multicast, multicast and
unicast addresses, by device name, added as many times as they were) are kept.

A ring its own process maps once, whole, is mapped again by its stand-in (rw-p, r--s...: the frames
are that program's memory, which is not restored; the kernel's ring is new and empty).
Refused, before the stop and again at dump: a ring mapped otherwise (twice, in part, by another
process), a fanout group that runs a BPF program (PACKET_FANOUT_CBPF, _EBPF: not readable),
a packet waiting (sent again it would reach every socket of the namespace), a SOCK_PACKET
socket (the obsolete kind), one bound to a device that is gone. Not kept: PACKET_COPY_THRESH, the
statistics (PACKET_STATISTICS: reading them resets them), a fanout group's member limit
(PACKET_FANOUT with struct fanout_args: not readable; the default, 256). Its owner (sk_uid) is
kept as an inet socket's (engine/fds/inet.py `made_as`: the thread that takes it raises CAP_NET_RAW again).

Read with packet_diag (NETLINK_SOCK_DIAG, AF_PACKET) in a child that joins the socket's network
namespace: its device's index, rings and memberships (their devices named there); its fanout with
getsockopt(PACKET_FANOUT).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct

from engine.imageformat import DICT, INT, LIST, MAX_UID, STR, F, rng
# (inet: its owner's maker, `made_as`; imported here, before restore pivots away from the engine)
from engine.fds import FdError, FdKind, RestoreFd, inet, inet_filter, inet_net, inet_opts, register, unix_bind

SOL_PACKET = 263
TYPES = {socket.SOCK_RAW: "raw", socket.SOCK_DGRAM: "dgram"}
TYPE_NO = {v: k for k, v in TYPES.items()}
OPTS = {"version": 10, "reserve": 12, "auxdata": 8, "origdev": 9, "vnet_hdr": 15, "loss": 14, "timestamp": 17,
        "qdisc_bypass": 20, "ignore_outgoing": 23}
PACKET_FANOUT = 18
PACKET_ADD_MEMBERSHIP = 1
RING_OPTS = {"rx": 5, "tx": 13}   # PACKET_RX_RING, PACKET_TX_RING
TPACKET_V3 = 2
FANOUT_CBPF, FANOUT_EBPF, FANOUT_UNIQUEID = 6, 7, 0x2000
# PACKET_FANOUT's modes restore joins again (_HASH, _LB, _CPU, _ROLLOVER, _RND, _QM: the kernel
# knows 0 to 7, the BPF ones refused) and flags the kernel knows (_ROLLOVER, _UNIQUEID, which dump
# never writes, _IGNORE_OUTGOING, _DEFRAG): bits of PACKET_FANOUT's value shifted by 16
FANOUT_MODES = range(6)
FANOUT_FLAGS = 0x1000 | 0x4000 | 0x8000
# A ring's kernel memory (block_size x block_nr), at most, and the image's rings' together (each
# socket once): the kernel takes a block_size below 2 GiB and any count of blocks, allocates them
# all at setsockopt and charges them to no memory cgroup, so an image's geometry alone (a few
# numbers) could make restore ask the kernel for terabytes. Dump refuses more before the stop.
MAX_RING_BYTES = 1 << 30
MAX_RINGS_BYTES = 4 << 30
MR_TYPES = range(4)   # PACKET_MR_MULTICAST, _PROMISC, _ALLMULTI, _UNICAST
SOCK_DIAG_BY_FAMILY = 20
SHOW = 0x1 | 0x2 | 0x4 | 0x8   # PACKET_SHOW_INFO, _MCLIST, _RING_CFG, _FANOUT
DIAG_INFO, DIAG_MCLIST, DIAG_RX_RING, DIAG_TX_RING, DIAG_FANOUT, DIAG_UID = 0, 1, 2, 3, 4, 5


def _rings(attrs: dict) -> dict:
    """{"rx"|"tx": [block_size, block_nr, frame_size, frame_nr, retire_tmo, sizeof_priv, features]}
    of a packet_diag record's PACKET_DIAG_RX_RING, _TX_RING (struct packet_diag_ring)."""
    return {name: list(struct.unpack_from("=7I", attrs[key])) for name, key in (("rx", DIAG_RX_RING),
                                                                               ("tx", DIAG_TX_RING))
            if len(attrs.get(key, b"")) >= 28}


def _mclist(raw: bytes) -> list[dict]:
    """The memberships of a PACKET_DIAG_MCLIST (struct packet_diag_mclist each: index, count, type,
    alen, addr[32]), each with its device's name in this namespace ("" when it has none)."""
    out = []
    for off in range(0, len(raw) - 43, 44):
        index, count, typ, alen = struct.unpack_from("=IIHH", raw, off)
        try:
            dev = socket.if_indextoname(index)
        except OSError:
            dev = ""
        out.append({"dev": dev, "type": typ, "addr": raw[off + 12:off + 12 + min(alen, 32)].hex(), "count": count})
    return out


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
                    "rings": _rings(attrs), "mclist": _mclist(attrs.get(DIAG_MCLIST, b""))}
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
    if big := _too_big(rec["rings"]):
        raise FdError(errno.EOPNOTSUPP, f"{where}: {big}: more than restore makes")
    if rec["rings"]:
        _count_rings(d, os.fstat(s.fileno()).st_ino, rec["rings"])
    mapped = _mapped(d, os.fstat(s.fileno()).st_ino, rec["rings"]) if rec["rings"] else None
    waiting = _ring_waiting(s, rec["rings"]) if rec["rings"] else None
    if waiting:
        raise FdError(errno.EOPNOTSUPP, f"{where}: a packet socket with {waiting}: not supported; dump again once "
                                        "the program has handled them")
    fanout = _fanout(s, where)
    if struct.unpack_from("=I", s.getsockopt(socket.SOL_SOCKET, 55, 36))[0]:   # SO_MEMINFO: receive memory
        raise FdError(errno.EOPNOTSUPP, f"{where}: packets wait on a packet socket: not supported; dump again once "
                                        "the program has read them")
    dev, proto = s.getsockname()[:2]   # (its device's name as its own namespace calls it)
    out = {"type": TYPES[typ], "protocol": proto}
    if rec["rings"]:
        out["rings"] = rec["rings"]
    if mapped:
        out["mapped"] = mapped
    if fanout:
        out["fanout"] = fanout
    if rec["mclist"]:
        if any(not m["dev"] for m in rec["mclist"]):
            raise FdError(errno.EOPNOTSUPP, f"{where}: a packet socket's membership of a device that is gone: "
                                            "not supported")
        out["mclist"] = rec["mclist"]
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


def _frames(geometry: list, base: int):
    """The offsets of a ring's frames (`geometry`: packet_diag_ring's numbers) in a mapping of the
    socket where the ring starts at `base`: frame_nr of them, block after block."""
    block_size, block_nr, frame_size, frame_nr = geometry[:4]
    per_block = block_size // frame_size if frame_size else 0
    for n in range(min(frame_nr, per_block * block_nr)):
        yield base + n // per_block * block_size + n % per_block * frame_size


def _ring_bytes(rings: dict) -> int:
    """The bytes a socket's rings (`rings`: {"rx"|"tx": geometry}) take in one mapping, rx then tx:
    block_size x block_nr each."""
    return sum(g[0] * g[1] for g in rings.values())


def _too_big(rings: dict) -> str | None:
    """What is too big in `rings` ({"rx"|"tx": geometry}): a ring past MAX_RING_BYTES; or None."""
    big = next((n for n, g in rings.items() if g[0] * g[1] > MAX_RING_BYTES), None)
    if big is None:
        return None
    return (f"a packet socket's {big} ring of {rings[big][0] * rings[big][1]} bytes (block_size x block_nr): "
            f"more than {MAX_RING_BYTES >> 20} MiB")


def _fanout_known(fanout: int) -> bool:
    """Whether PACKET_FANOUT's value `fanout` has a mode of FANOUT_MODES and flags of FANOUT_FLAGS only."""
    return (fanout >> 16 & 0xff) in FANOUT_MODES and not fanout >> 16 & 0xff00 & ~FANOUT_FLAGS


def _count_rings(d, ino: int, rings: dict) -> None:
    """Add socket `ino`'s rings to the tree's (d.scratch, each socket once): FdError past MAX_RINGS_BYTES."""
    seen = d.scratch.setdefault("packet-ring-bytes", {})
    seen[ino] = _ring_bytes(rings)
    if sum(seen.values()) > MAX_RINGS_BYTES:
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: the tree's packet sockets' rings take {sum(seen.values())} "
                                        f"bytes: more than restore makes ({MAX_RINGS_BYTES >> 20} MiB in all)")


def check_total(doc: dict, fail) -> None:
    """The image's packet rings together (each socket once: fds of one description `desc` are one,
    counted as the largest of them, whichever restore makes it from) at most MAX_RINGS_BYTES."""
    seen: dict = {}
    for p in doc["processes"]:
        for f in p["fds"]:
            if f.get("kind") == "packet" and f.get("rings"):
                key = f.get("desc") or (p["pid"], f["fd"])
                seen[key] = max(seen.get(key, 0), _ring_bytes(f["rings"]))
    if sum(seen.values()) > MAX_RINGS_BYTES:
        fail(f"the image's packet sockets' rings take {sum(seen.values())} bytes: more than restore makes "
             f"({MAX_RINGS_BYTES >> 20} MiB in all)")


def _ring_waiting(s: socket.socket, rings: dict) -> str | None:
    """What waits in socket `s`'s rings, read through a mapping of ours (the rx ring first, then
    the tx one): frames the kernel handed to the program (TP_STATUS_USER) that it has not handed
    back, frames the program queued for sending (any status but TP_STATUS_AVAILABLE); or None."""
    version = s.getsockopt(SOL_PACKET, OPTS["version"])
    size = _ring_bytes(rings)
    with mmap.mmap(s.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
        rx = rings.get("rx")
        if rx and version == TPACKET_V3:   # (a block's status: tpacket_block_desc's hdr.bh1.block_status)
            if any(struct.unpack_from("=I", m, b * rx[0] + 8)[0] & 1 for b in range(rx[1])):
                return "received packets in its rx ring that the program has not read"
        elif rx and any(struct.unpack_from("=Q" if version == 0 else "=I", m, off)[0] & 1 for off in _frames(rx, 0)):
            return "received packets in its rx ring that the program has not read"
        tx = rings.get("tx")
        status = 20 if version == TPACKET_V3 else 0   # (tpacket3_hdr's tp_status; the others' first field)
        base = rx[0] * rx[1] if rx else 0
        if tx and any(struct.unpack_from("=Q" if version == 0 else "=I", m, off + status)[0]
                      for off in _frames(tx, base)):
            return "frames in its tx ring not sent yet"
    return None


def _fanout(s: socket.socket, where: str) -> int:
    """Socket `s`'s PACKET_FANOUT (id | mode << 16 | flags << 24; 0: none), or FdError for a group
    restore cannot join again as it was. (A group made with PACKET_FANOUT_FLAG_UNIQUEID shows its
    kernel-chosen id without the flag, which the kernel drops: joined again by that id.)"""
    fanout = s.getsockopt(SOL_PACKET, PACKET_FANOUT) & 0xffffffff   # (an int: flags in its sign bit)
    if fanout and (fanout >> 16 & 0xff) in (FANOUT_CBPF, FANOUT_EBPF):
        raise FdError(errno.EOPNOTSUPP, f"{where}: a packet socket in a fanout group that runs a BPF program "
                                        "(PACKET_FANOUT_CBPF, _EBPF: not readable): not supported")
    if fanout and not _fanout_known(fanout):
        raise FdError(errno.EOPNOTSUPP, f"{where}: a packet socket in a fanout group of a mode or flags this "
                                        f"mntcr does not know ({fanout >> 16:#06x}): not supported")
    return fanout


def _mappings(d, ino: int) -> list[tuple[int, int, str]]:
    """The mappings of socket `ino` (its rings) by the tree's processes (d.scratch["pids"], else d's):
    [(pid, size, perms as /proc/PID/maps shows them)]."""
    want, out = f" socket:[{ino}]", []
    for pid in d.scratch.get("pids") or [d.pid]:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    if line.rstrip("\n").endswith(want):
                        start, _, end = line.split()[0].partition("-")
                        out.append((pid, int(end, 16) - int(start, 16), line.split()[1]))
        except OSError:
            continue
    return out


def _mapped(d, ino: int, rings: dict) -> str | None:
    """How the ring of socket `ino` is mapped ("rw-p": perms and sharing, as /proc/PID/maps shows
    them), or None; FdError unless the fd's own process maps the whole ring once (what its stand-in,
    which makes the socket, can map again)."""
    maps = _mappings(d, ino)
    if not maps:
        return None
    size = _ring_bytes(rings)
    pid, got, perms = maps[0]
    if len(maps) > 1 or pid != d.pid or got != size or perms[3] not in "ps" or perms[2] == "x":
        raise FdError(errno.EOPNOTSUPP, f"{d.where}: a packet socket whose ring is mapped other than once, whole, by "
                                        f"the process of this fd (process {pid}, {got} bytes of {size}, "
                                        f"{len(maps)} mappings): not supported")
    return perms


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
    _check_extras(e, what)


def _check_extras(e: dict, what: str) -> None:
    """The rings, fanout and memberships of entry `e`, as the kernel could have them."""
    from engine.image import _fail
    rings = e.get("rings", {})
    if not isinstance(rings, dict) or set(rings) - set(RING_OPTS) or any(
            not isinstance(v, list) or len(v) != 7 or any(type(x) is not int or not 0 <= x < 1 << 32 for x in v)
            for v in rings.values()):
        _fail(f"{what}: bad packet socket rings (rx, tx: seven 32-bit numbers each)")
    if big := _too_big(rings):
        _fail(f"{what}: {big}, not restored")
    mapped = e.get("mapped")
    if mapped is not None and not (rings and len(mapped) == 4 and mapped[0] in "r-" and mapped[1] in "w-"
                                   and mapped[2] == "-" and mapped[3] in "ps"):
        _fail(f"{what}: bad packet socket ring mapping {str(mapped)[:20]!r} (rw-p, r--s...; rings needed)")
    fanout = e.get("fanout", 0)
    if type(fanout) is not int or not 0 <= fanout < 1 << 32 or fanout and not _fanout_known(fanout):
        _fail(f"{what}: bad packet socket fanout {fanout!r} (a mode of 0 to 5, no BPF one, and the flags "
              "rollover, ignore_outgoing, defrag)")
    mcl = e.get("mclist", [])
    if not isinstance(mcl, list) or len(mcl) > 256 or any(
            not isinstance(m, dict) or set(m) != {"dev", "type", "addr", "count"}
            or not isinstance(m["dev"], str) or not 0 < len(m["dev"]) < 16 or "/" in m["dev"] or "\0" in m["dev"]
            or m["type"] not in MR_TYPES or type(m["count"]) is not int or not 0 < m["count"] <= 1024
            or not isinstance(m["addr"], str) or len(m["addr"]) > 64 or len(m["addr"]) % 2
            or any(c not in "0123456789abcdef" for c in m["addr"]) for m in mcl):
        _fail(f"{what}: bad packet socket memberships (device, type 0-3, address, count)")


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
        _make_extras(s, spec)
        return None, [s.detach()]
    finally:
        s.close()


def _make_extras(s: socket.socket, spec: dict) -> None:
    """Its rings (its version and reserve set before), fanout group (once bound: the kernel joins
    a running socket only) and memberships."""
    step = ""
    try:
        for name, geometry in spec.get("rings", {}).items():
            step = f"its {name} ring"
            if spec["popts"].get("version") == TPACKET_V3:
                s.setsockopt(SOL_PACKET, RING_OPTS[name], struct.pack("=7I", *geometry))
            else:   # (struct tpacket_req: the geometry alone)
                s.setsockopt(SOL_PACKET, RING_OPTS[name], struct.pack("=4I", *geometry[:4]))
        if spec.get("mapped"):
            step = "mapping its rings"
            _map_rings(s.fileno(), spec)
        if spec.get("fanout"):
            step = "its fanout group"
            s.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("=I", spec["fanout"]))
        for m in spec.get("mclist", []):
            step = f"its membership of {m['dev']}"
            addr = bytes.fromhex(m["addr"])
            mreq = struct.pack("=iHH32s", socket.if_nametoindex(m["dev"]), m["type"], len(addr), addr)
            for _ in range(m["count"]):
                s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    except OSError as e:
        raise FdError(e.errno or errno.EINVAL, f"packet socket: {step}: {e.strerror or e}") from None


def _map_rings(fd: int, spec: dict) -> None:
    """Map socket `fd`'s rings whole, as the process did ("rw-p"...), for good: the stand-in holds
    the mapping (at an address of the kernel's choice: addresses are not restored)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    perms = spec["mapped"]
    prot = (mmap.PROT_READ if perms[0] == "r" else 0) | (mmap.PROT_WRITE if perms[1] == "w" else 0)
    flags = mmap.MAP_SHARED if perms[3] == "s" else mmap.MAP_PRIVATE
    size = _ring_bytes(spec["rings"])
    addr = libc.mmap(None, size, prot, flags, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open(r: RestoreFd) -> int:
    e = r.entry
    fd = r.standin("make", {k: e[k] for k in ("type", "protocol", "dev", "popts", "opts", "filter", "uid", "rings",
                                              "mapped", "fanout", "mclist") if k in e})[0]
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
                        "uid": F(INT, required=False, rule=rng(0, MAX_UID)),
                        # {"rx"|"tx": packet_diag_ring's seven numbers}, PACKET_FANOUT's value, and the
                        # memberships [{dev, type, addr (hex), count}] (checked by _check_extras)
                        "rings": F(DICT, required=False),
                        "mapped": F(STR, required=False),   # its rings mapped by its process: "rw-p"...
                        "fanout": F(INT, required=False),
                        "mclist": F(LIST, required=False)}))
