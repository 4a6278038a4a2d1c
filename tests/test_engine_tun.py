"""tun and tap devices of the tree's network namespace and the /dev/net/tun fds attached to them
(engine/tundev.py, engine/fds/tun.py): the devices made again with their flags, owner, persistence,
ifindex, MTU, MAC and addresses, the fds attached again (a detached queue detached), and frames
flowing through both after restore; what restore cannot make refused before the stop; hostile
images refused by the validator."""

from __future__ import annotations

import fcntl
import os
import re
import select
import socket
import struct

import pytest

from tests.enginecase import CRError, STOP_WATCH, case, grab_fd, load_manifest, py_hold, was_stopped  # noqa: F401

MKNOD = "mkdir -p /dev/net; mknod -m 666 /dev/net/tun c 10 200; "

TUN = """
import fcntl, struct, socket, subprocess
def tun(name, flags, index=0):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    if index:
        fcntl.ioctl(fd, 0x400454DA, struct.pack("I", index))   # TUNSETIFINDEX
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), flags))   # TUNSETIFF
    return fd
def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)
"""

TREE = TUN + """
os.dup2(tun("tap0", 0x2 | 0x1000, 77), 10)              # tap, no packet information, ifindex 77
os.dup2(tun("tun0", 0x1), 11)                           # tun with packet information
os.dup2(tun("mq0", 0x2 | 0x1000 | 0x100), 12)           # multi-queue tap: two queues
os.dup2(tun("mq0", 0x2 | 0x1000 | 0x100), 13)
fcntl.ioctl(13, 0x400454D9, struct.pack("16sH22x", b"", 0x400))   # TUNSETQUEUE IFF_DETACH_QUEUE
p = tun("tunp", 0x1 | 0x1000 | 0x4000)                  # persistent tun (vnet header), owner 1000, no fd
fcntl.ioctl(p, 0x400454CB, 1); fcntl.ioctl(p, 0x400454CC, 1000); os.close(p)
os.dup2(os.open("/dev/net/tun", os.O_RDWR), 14)         # opened, not attached
sh("ip link set tap0 address 02:00:00:00:00:07 mtu 1400 up; ip addr add 10.9.0.1/24 dev tap0; "
   "ip link set tun0 up; ip addr add 10.8.0.1/24 dev tun0; ip link set tunp up")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.8.0.1", 5000)); os.dup2(u.fileno(), 15); u.close()
import time   # (the snapshot before C/R: once the kernel's link-local addresses passed DAD, as restore makes them)
for _ in range(400):
    out = subprocess.run("ip -6 -o addr show scope link", shell=True, capture_output=True, text=True).stdout
    if " tap0 " in out and " tun0 " in out and "tentative" not in out:
        break
    time.sleep(0.05)
else:
    raise SystemExit("the link-local addresses of tap0 and tun0 did not come: " + out)
"""


def _in_netns(body: str) -> str:
    hold = py_hold(body)
    return MKNOD + "exec unshare -n sh -c 'ip link set lo up; exec \"$0\" \"$@\"' " + hold[len("exec "):]


def _links(pid: int) -> str:
    import subprocess
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-d", "-o", "link", "show"], capture_output=True,
                          text=True, check=True).stdout


def _tun_records(pid: int) -> dict:
    """{name: tun record (engine/tundev.py)} of the tun devices of process `pid`'s network namespace."""
    from engine import kernel, rtnl, tundev
    kernel.setns(os.open(f"/proc/{pid}/ns/net", os.O_RDONLY), kernel.CLONE_NEWNET)
    out = {}
    for _t, msg in rtnl.dump(rtnl.RTM_GETLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        a = rtnl.attrs(msg, rtnl.IFINFO.size)
        info = rtnl.attrs(a.get(rtnl.IFLA_LINKINFO, b""))
        if rtnl.text(info.get(rtnl.IFLA_INFO_KIND)) == "tun":
            name = rtnl.text(a[rtnl.IFLA_IFNAME])
            out[name] = tundev.info_of(rtnl.attrs(info.get(rtnl.IFLA_INFO_DATA, b"")), name)
    return out


def _frame_of(fd: int, want, what: str, seconds: float = 20.0) -> bytes:
    """The first frame read from tap/tun fd `fd` for which want(frame) holds (others, IPv6's own, passed over)."""
    import time
    os.set_blocking(fd, False)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            frame = os.read(fd, 65536)
            if want(frame):
                return frame
    raise AssertionError(f"no {what} read from the tun fd in {seconds}s")


def _ip_udp(src: str, dst: str, port: int, data: bytes) -> bytes:
    """An IPv4 UDP packet (no UDP checksum) from `src` to `dst`:`port`."""
    udp = struct.pack("!HHHH", 4444, port, 8 + len(data), 0) + data
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src),
                      socket.inet_aton(dst))
    total = sum(struct.unpack("!10H", hdr))
    total = (total & 0xFFFF) + (total >> 16)
    return hdr[:10] + struct.pack("!H", ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF) + hdr[12:] + udp


def _ping_udp(pid: int) -> None:
    """In the tree's network namespace: a datagram to 10.9.0.2 (on tap0: an ARP request)."""
    from engine import kernel
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    kernel.setns(fd, kernel.CLONE_NEWNET)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("10.9.0.2", 9))


def test_tun_tap_kept(case):
    """A tap at ifindex 77 (MAC, MTU, address), a tun with packet information, a multi-queue tap with
    a detached queue, a persistent tun with an owner and no fd, an open not attached: after C/R
    (twice) the devices are there as they were and the fds attached; the kernel's ARP request for a
    neighbour on the tap is read from fd 10, and a packet written into the tun's fd 11 reaches the
    UDP socket of the tree."""
    from engine import forkrun
    _before, _, after = case.roundtrip(_in_netns(TREE), iters=2)
    links = _links(after.pid)
    assert re.search(r"^77: tap0: .*mtu 1400 .*link/ether 02:00:00:00:00:07 ", links, re.M), links
    recs = forkrun.run(_tun_records, after.pid)
    assert recs == {"tap0": {"type": "tap", "pi": False, "vnet_hdr": False, "multi_queue": False, "persist": False},
                    "tun0": {"type": "tun", "pi": True, "vnet_hdr": False, "multi_queue": False, "persist": False},
                    "mq0": {"type": "tap", "pi": False, "vnet_hdr": False, "multi_queue": True, "persist": False},
                    "tunp": {"type": "tun", "pi": False, "vnet_hdr": True, "multi_queue": False, "persist": True,
                             "owner": 1000}}, recs
    assert re.search(r"mq0: .*multi_queue numqueues 1 numdisabled 1 ", links), links
    for n, want in ((12, 0), (13, 0x400)):   # (TUNGETIFF: IFF_DETACH_QUEUE on a detached queue)
        got = grab_fd(after.pid, n)
        try:
            flags = struct.unpack_from("H", fcntl.ioctl(got, 0x800454D2, bytes(40)), 16)[0]
        finally:
            os.close(got)
        assert flags & 0x400 == want, f"fd {n}: flags {flags:#x}"
    with open(f"/proc/{after.pid}/fdinfo/14") as f:
        assert "iff:\t\n" in f.read(), "fd 14: attached to a device"
    tap = grab_fd(after.pid, 10)
    try:
        forkrun.run(_ping_udp, after.pid)
        arp = _frame_of(tap, lambda f: f[12:14] == b"\x08\x06" and f[38:42] == socket.inet_aton("10.9.0.2"),
                        "ARP request for 10.9.0.2")
        assert arp[6:12] == bytes.fromhex("020000000007"), arp.hex()
    finally:
        os.close(tap)
    tun = grab_fd(after.pid, 11)
    try:
        os.write(tun, struct.pack("!HH", 0, 0x0800) + _ip_udp("10.8.0.2", "10.8.0.1", 5000, b"through tun0"))
    finally:
        os.close(tun)
    with socket.socket(fileno=grab_fd(after.pid, 15)) as u:
        u.settimeout(20)
        assert u.recv(100) == b"through tun0"


@pytest.mark.parametrize("what,body,why", [
    ("outside", TUN + """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
home = os.open("/proc/self/ns/net", os.O_RDONLY)
assert libc.unshare(0x40000000) == 0   # a namespace only the tap will keep
os.dup2(tun("tap0", 0x2 | 0x1000), 10)
assert libc.setns(home, 0x40000000) == 0
""", r"fd [0-9]+ \(/dev/net/tun\): attached to tun device tap0 of a network namespace that is not the tree's own"),
    ("napi", TUN + 'os.dup2(tun("tap0", 0x2 | 0x1000 | 0x10), 10)\n', r"fd [0-9]+ .*IFF_NAPI"),
    ("renamed", 'import fcntl, struct\nos.mknod("/dev/net/tapctl", 0o20600, os.makedev(10, 200))\n'
                'fd = os.open("/dev/net/tapctl", os.O_RDWR)\n'
                'fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"tap0", 0x1002)); os.dup2(fd, 10)\n',
     r"fd [0-9]+ \(/dev/net/tapctl\): the tun device \(10:200\) under another name than tun"),
    # (a queueing discipline added with tc, though of the kind the kernel gives by default: restore's
    # device would get the kernel's own)
    ("qdisc", TUN + 'os.dup2(tun("tun0", 0x1), 10)\nsh("ip link set tun0 up; tc qdisc replace dev tun0 root pfifo_fast")\n',
     r"interface tun0 has queueing discipline pfifo_fast, which restore does not make: not supported"),
])
def test_tun_refused_before_stop(case, what, body, why):
    """A tap of a network namespace no process of the tree is in, one made with IFF_NAPI, one attached
    through a tun node of another name, a tun with a queueing discipline of the user's: refused naming
    the fd or the device, before the stop."""
    pid = case.start(STOP_WATCH + _in_netns(body))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(why, str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_tun_image_checked(case):
    """The validator: a tun fd names a tun device the image keeps in a namespace restore makes, of
    the persistence the device has; a link's tun record well-formed; a tun link only where restore
    makes the namespace (never the restorer's own)."""
    from engine import image, imageformat
    pid = case.start(_in_netns(TREE))
    img = case.new_images_dir()
    case.dump(pid, img)
    imageformat.validate(load_manifest(img))

    def fd(doc, n):
        return next(f for f in doc["processes"][0]["fds"] if f["fd"] == n)

    def link(doc, name):
        return next(lk for rec in doc["netdevs"].values() for lk in rec["links"] if lk["name"] == name)

    for change, text in ((lambda d: fd(d, 10).update(dev="eth0"), "no tun device the image keeps"),
                         (lambda d: fd(d, 10).update(dev="lo"), "no tun device the image keeps"),
                         (lambda d: fd(d, 10).update(net="net-7"), "net-7"),
                         (lambda d: fd(d, 10).update(dev="../tap0"), "interface name"),
                         (lambda d: fd(d, 10).update(persist=True), "persistence"),
                         (lambda d: fd(d, 10).pop("sndbuf"), "has all of"),
                         (lambda d: fd(d, 10).update(vnet_hdr_sz=2), "vnet_hdr_sz"),
                         (lambda d: link(d, "tap0").pop("tun"), "tun record"),
                         (lambda d: link(d, "tap0")["tun"].update(type="tap2"), "tun record"),
                         (lambda d: link(d, "tap0")["tun"].update(owner=-1), "tun record"),
                         (lambda d: link(d, "tap0").update(kind="dummy"), "tun record")):
        doc = load_manifest(img)
        change(doc)
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)
    doc = load_manifest(img)
    doc["processes"][0]["host_ns"] = sorted(set(doc["processes"][0].get("host_ns", [])) | {"net"})
    with pytest.raises(image.ImageError, match="network namespace"):
        imageformat.validate(doc)


def _host_links() -> list[tuple[int, str, int]]:
    """(ifindex, name, flags) of our network namespace's links."""
    from engine import rtnl
    return sorted((rtnl.IFINFO.unpack_from(m)[2], rtnl.text(rtnl.attrs(m, rtnl.IFINFO.size)[rtnl.IFLA_IFNAME]),
                   rtnl.IFINFO.unpack_from(m)[3])
                  for _t, m in rtnl.dump(rtnl.RTM_GETLINK, rtnl.IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)))


def test_tun_name_and_index_of_a_host_device(case):
    """An image whose tap has the name and ifindex of a device of the restorer's network namespace
    (the host's): the tap is made in the restored namespace only (under that name, at another index
    when the restored namespace has that one taken), the fd attached to it; the host's devices are
    untouched."""
    from engine import forkrun
    host = [lk for lk in _host_links() if lk[1] != "lo"]
    if not host:
        pytest.skip("the host's network namespace has no device but lo to collide with")
    index, name, _flags = host[0]
    pid = case.start(_in_netns(TREE))
    img = case.new_images_dir()
    case.dump(pid, img)
    doc = load_manifest(img)
    links = next(iter(doc["netdevs"].values()))["links"]
    for other in links:   # (the image's other devices out of the way: one index each)
        if other["index"] == index:
            other["index"] = 90
    lk = next(lk for lk in links if lk["name"] == "tap0")
    lk.update(name=name, index=index)
    for f in (f for p in doc["processes"] for f in p["fds"] if f.get("dev") == "tap0"):
        f["dev"] = name
    for a in next(iter(doc["netdevs"].values()))["addrs"] + next(iter(doc["netdevs"].values()))["routes"]:
        if a.get("dev") == "tap0":
            a["dev"] = name
    from tests.enginecase import save_manifest
    save_manifest(img, doc)
    before = _host_links()
    restored = case.restore(img)
    assert _host_links() == before
    assert name in forkrun.run(_tun_records, restored)
    got = grab_fd(restored, 10)
    try:
        assert struct.unpack_from("16s", fcntl.ioctl(got, 0x800454D2, bytes(40)))[0].rstrip(b"\0") == name.encode()
    finally:
        os.close(got)


def _tap_in(pid: int, name: str, sock: int) -> None:
    """In a child: a tap `name` in process `pid`'s network namespace, its fd sent back on `sock`."""
    from engine import kernel
    kernel.setns(os.open(f"/proc/{pid}/ns/net", os.O_RDONLY), kernel.CLONE_NEWNET)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), 0x2 | 0x1000))
    socket.send_fds(socket.socket(fileno=os.dup(sock)), [b"t"], [fd])


def test_tun_holder_outside_refused(case):
    """A tap of the tree's network namespace whose fd a process outside the tree holds (the test, as
    a slirp4netns left out of the dump would): refused in one line naming it (restore would make a
    tap no one holds), the tree left running."""
    from engine import forkrun
    pid = case.start(_in_netns(TUN + 'os.dup2(tun("tap0", 0x2 | 0x1000), 10)\n'))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        forkrun.run(_tap_in, pid, "tapx", theirs.fileno())
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        assert len(fds) == 1, "the helper sent no tap fd"
        try:
            with pytest.raises(CRError, match=r"interface tapx is a tun device with 1 fds attached, 0 of them the "
                                              r"tree's: the other holder is outside the tree"):
                case.dump(pid, case.new_images_dir())
            os.kill(pid, 0)   # (still there: the refusal resumed it)
        finally:
            os.close(fds[0])
    finally:
        ours.close()
        theirs.close()
