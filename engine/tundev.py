"""tun and tap devices (/dev/net/tun, TUNSETIFF) of the tree's network namespaces: what the image keeps
of the device (a "tun" record on its link in manifest "netdevs", engine/netlinks.py) and how restore
makes it again (engine/netlinks_make.py); engine/fds/tun.py keeps the fds attached to one.

Kept, read by rtnetlink (IFLA_LINKINFO's IFLA_TUN_* attributes, Linux >= 4.15): its type (tun or
tap), packet information (IFF_NO_PI off), IFF_VNET_HDR, IFF_MULTI_QUEUE, persistence and owner and
group (the dumper's ids; absent: none), its IFF_NOARP and IFF_MULTICAST flags ("ifflags"), besides what every kept link has (name, ifindex, MTU, MAC
address, up, addresses, routes). The device's default queueing discipline is the one a restored
device gets too.

Restore makes it in a child joined to the restored namespace: /dev/net/tun opened there, its
ifindex asked for (TUNSETIFINDEX: another when taken), TUNSETIFF with the kept flags, owner and
group, and made persistent, so that it outlives the child; the fds attach to it later
(engine/fds/tun.py), and the last step drops the persistence of a device that was not persistent.

Not kept: the frames waiting in its queues (a restored device starts with empty queues, as a
network may lose frames anyway: CRIU does the same), its TX filter (TUNSETTXFILTER), eBPF steering
and filter programs, IFF_NAPI (refused: engine/fds/tun.py), the vnet header's byte order, offloads
(TUNSETOFFLOAD: the program sets them again when it reattaches; not seen otherwise).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

__all__ = ["info_of", "check", "make", "flags_of", "DEV"]

DEV = "/dev/net/tun"
TUN_MAJOR, TUN_MINOR = 10, 200
IFF_TUN, IFF_TAP, IFF_NAPI, IFF_NAPI_FRAGS = 0x1, 0x2, 0x10, 0x20
IFF_MULTI_QUEUE, IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE, IFF_PERSIST = 0x100, 0x200, 0x400, 0x800
IFF_NO_PI, IFF_VNET_HDR = 0x1000, 0x4000
IFLA_CARRIER = 33   # (IFF_NOFILTER, TUNGETIFF's, is 0x1000 too)
TUNSETIFF, TUNSETPERSIST, TUNSETOWNER, TUNSETGROUP = 0x400454CA, 0x400454CB, 0x400454CC, 0x400454CE
TUNGETIFF, TUNGETSNDBUF, TUNSETSNDBUF = 0x800454D2, 0x800454D3, 0x400454D4
TUNGETVNETHDRSZ, TUNSETVNETHDRSZ, TUNSETQUEUE, TUNSETIFINDEX = 0x800454D7, 0x400454D8, 0x400454D9, 0x400454DA
TUNGETFILTER, TUNGETDEVNETNS = 0x801054DB, 0x54E3
# IFLA_TUN_* (linux/if_link.h)
_OWNER, _GROUP, _TYPE, _PI, _VNET_HDR, _PERSIST, _MULTI_QUEUE, _NUM_QUEUES, _NUM_DISABLED = 1, 2, 3, 4, 5, 6, 7, 8, 9
_KEYS = {"type", "pi", "vnet_hdr", "multi_queue", "persist", "owner", "group", "ifflags", "queues"}
IFFLAGS = 0x80 | 0x1000   # the device's IFF_NOARP and IFF_MULTICAST, kept ("ifflags"; a program may change them)
MAX_ID = 2**32 - 2   # (-1 is "none": the key is absent then)


def info_of(data: dict[int, bytes], name: str, carrier: bool | None = None) -> dict:
    """The "tun" record of link `name` from its IFLA_INFO_DATA attributes ({IFLA_TUN_*: payload});
    ValueError (a line) when the kernel does not tell them. With `carrier` (IFLA_CARRIER: a
    single-queue device has it while an fd is attached), its "queues" too."""
    if _TYPE not in data:
        raise ValueError(f"interface {name} is a tun device whose flags rtnetlink does not tell (Linux < 4.15): "
                         "not supported")
    typ = data[_TYPE][0]
    if typ not in (IFF_TUN, IFF_TAP):
        raise ValueError(f"interface {name} is a tun device of type {typ}: not supported")
    out = {"type": "tun" if typ == IFF_TUN else "tap"}
    for key, t in (("pi", _PI), ("vnet_hdr", _VNET_HDR), ("multi_queue", _MULTI_QUEUE), ("persist", _PERSIST)):
        out[key] = bool((data.get(t) or b"\0")[0])
    # its fds, attached or detached queues: each an fd of the tree, or the tap would come back without its
    # holder (the kernel counts them for a multi-queue device only)
    if carrier is not None:
        out["queues"] = sum(struct.unpack_from("=I", data[t])[0] for t in (_NUM_QUEUES, _NUM_DISABLED) if t in data) \
            if out["multi_queue"] else int(carrier)
    for key, t in (("owner", _OWNER), ("group", _GROUP)):
        if t in data:
            value = struct.unpack_from("=I", data[t])[0]
            if value <= MAX_ID:
                out[key] = value
    return out


def check(rec, what: str, fail) -> None:
    """The validator's rule for a link's "tun" record: its keys, a type, booleans, ids in range."""
    if type(rec) is not dict or set(rec) - _KEYS or rec.get("type") not in ("tun", "tap") \
            or any(type(rec.get(k)) is not bool for k in ("pi", "vnet_hdr", "multi_queue", "persist")) \
            or any(k in rec and (type(rec[k]) is not int or not 0 <= rec[k] <= MAX_ID) for k in ("owner", "group")) \
            or "ifflags" in rec and (type(rec["ifflags"]) is not int or rec["ifflags"] & ~IFFLAGS or rec["ifflags"] < 0) \
            or "queues" in rec and (type(rec["queues"]) is not int or not 0 <= rec["queues"] <= 65535):
        fail(f"{what}: its tun record must be {{type tun or tap, pi, vnet_hdr, multi_queue, persist: true or false, "
             f"owner, group: ids, ifflags: of {IFFLAGS:#x}, queues: 0..65535}}")


def flags_of(rec: dict) -> int:
    """The TUNSETIFF flags of a device of "tun" record `rec` (its persistence is TUNSETPERSIST's)."""
    return ((IFF_TUN if rec["type"] == "tun" else IFF_TAP) | (0 if rec["pi"] else IFF_NO_PI)
            | (IFF_VNET_HDR if rec["vnet_hdr"] else 0) | (IFF_MULTI_QUEUE if rec["multi_queue"] else 0))


def ifreq(name: str, flags: int) -> bytes:
    """A struct ifreq of `name` and flags `flags` (ifr_flags)."""
    return struct.pack("16sH22x", name.encode(), flags)


def open_dev() -> int:
    """A new open of /dev/net/tun, of our network namespace; OSError saying what when there is none."""
    try:
        fd = os.open(DEV, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"{DEV}: {e.strerror} (the host has no tun driver, or no such node)") from None
    st = os.fstat(fd)
    if (os.major(st.st_rdev), os.minor(st.st_rdev)) != (TUN_MAJOR, TUN_MINOR):
        os.close(fd)
        raise OSError(errno.ENODEV, f"{DEV} is not the tun device (10:200)")
    return fd


def make(lk: dict) -> None:
    """Make tun link `lk` (a netdevs link of kind tun) in our network namespace, persistent, at its
    ifindex when free; its MTU and MAC address are the caller's (RTM_SETLINK)."""
    rec = lk["tun"]
    fd = open_dev()
    try:
        for index in (lk["index"], 0):
            try:
                if index:
                    fcntl.ioctl(fd, TUNSETIFINDEX, struct.pack("=I", index))
                fcntl.ioctl(fd, TUNSETIFF, ifreq(lk["name"], flags_of(rec)))
                break
            except OSError as e:
                if not index or e.errno not in (errno.EBUSY, errno.EEXIST):
                    raise OSError(e.errno, f"interface {lk['name']} (tun): TUNSETIFF: {e.strerror}") from None
                os.close(fd)   # (its index is taken: a new open forgets the one asked for)
                fd = open_dev()
        for key, req in (("owner", TUNSETOWNER), ("group", TUNSETGROUP)):
            if key in rec:
                fcntl.ioctl(fd, req, rec[key])
        fcntl.ioctl(fd, TUNSETPERSIST, 1)   # (dropped once its fds are attached, when it was not)
    finally:
        os.close(fd)


def check_attached(doc: dict, made: set[str], fail) -> None:
    """The validator's rule for tun fds attached to a device: the device is a tun link the image
    keeps in a network namespace restore makes (`made`), of the persistence the fd says; restore
    attaches to nothing else (TUNSETIFF of another name would make a device)."""
    links = {(nsid, lk.get("name")): lk for nsid, rec in (doc.get("netdevs") or {}).items() if type(rec) is dict
             for lk in rec.get("links") or () if type(lk) is dict}
    for p in doc["processes"]:
        for e in p["fds"]:
            if e.get("kind") != "tun" or "dev" not in e:
                continue
            lk = links.get((e["net"], e["dev"]))
            if e["net"] not in made or lk is None or lk.get("kind") != "tun":
                fail(f"process {p['pid']} fd {e['fd']}: attached to tun device {e['dev']} of {e['net']}, which is no "
                     "tun device the image keeps in a network namespace restore makes")
            if lk["tun"]["persist"] != e["persist"]:
                fail(f"process {p['pid']} fd {e['fd']}: its tun device {e['dev']}'s persistence differs from the "
                     "device's record")


def held_outside(netdevs: dict, procs: list[dict]) -> str | None:
    """Why dump refuses (a line), or None: a tun device of `netdevs` (dump's) with more fds (its
    "queues") than the tree's processes `procs` hold open descriptions attached to it: the others'
    holder is outside the tree (slirp4netns, a VPN client), and the device would come back without it."""
    held: dict[tuple[str, str], set] = {}
    for p in procs:
        for e in p["fds"]:
            if e.get("kind") == "tun" and "dev" in e:
                held.setdefault((e["net"], e["dev"]), set()).add(e.get("desc") or (p["pid"], e["fd"]))
    for nsid, rec in sorted(netdevs.items()):
        for lk in rec.get("links", ()):
            want = lk.get("tun", {}).get("queues", 0)
            have = len(held.get((nsid, lk["name"]), ()))
            if lk["kind"] == "tun" and have < want:
                return (f"network namespace {nsid}: interface {lk['name']} is a tun device with {want} fds attached, "
                        f"{have} of them the tree's: the other holder is outside the tree (slirp4netns, a VPN "
                        "client...), and the device would come back without it: not supported; dump the tree "
                        "that holds it too")
    return None
