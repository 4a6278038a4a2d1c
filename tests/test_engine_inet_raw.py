"""Raw inet sockets (SOCK_RAW, any protocol: ping as root, traceroute, monitoring agents) of a
network namespace the tree owns (engine/fds/inet.py): protocol, bound address, peer, IP_HDRINCL,
ICMP and ICMPv6 filters, IPV6_CHECKSUM made again in the restored namespace; one with a packet
waiting is refused before the stop."""

from __future__ import annotations

import os
import re
import socket
import struct

import pytest

from tests.enginecase import CRError, STOP_WATCH, case, grab_fd, load_manifest, was_stopped  # noqa: F401
from tests.test_engine_inet_ping import _in_netns, _fd

RAW = """
import socket, struct
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); r.bind(("127.0.0.1", 0))
r.setsockopt(255, 1, struct.pack("I", ~(1 << 8) & 0xffffffff))   # ICMP_FILTER: echo requests (8) alone
os.dup2(r.fileno(), 10)
h = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW); os.dup2(h.fileno(), 11)
t = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
t.setsockopt(socket.IPPROTO_IP, 3, 1)   # IP_HDRINCL
t.connect(("127.0.0.1", 0)); os.dup2(t.fileno(), 12)
v = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6); v.connect(("::1", 0))
v.setsockopt(58, 1, b"\\xff" * 16 + b"\\0" * 16)   # ICMP6_FILTER: types 128..255 pass (1: blocked)
os.dup2(v.fileno(), 13)
u = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 200); u.setsockopt(socket.IPPROTO_IPV6, 7, 4)   # IPV6_CHECKSUM
os.dup2(u.fileno(), 14)
for s in (r, h, t, v, u): s.close()
"""


def test_raw_sockets_kept(case):
    """Raw sockets of ICMP (bound, with an ICMP filter), IPPROTO_RAW, TCP (IP_HDRINCL, connected),
    ICMPv6 (connected, with an ICMPv6 filter) and protocol 200 (IPV6_CHECKSUM): after C/R (twice)
    each is there with its protocol, address, peer and options, and the ICMP one receives an echo
    request sent in the restored namespace, not the echo reply its filter blocks."""
    before, _, after = case.roundtrip(_in_netns(RAW), iters=2)
    assert "inet raw name=127.0.0.1:1 " in _fd(after, 10)
    assert f"icmp_filter:[{~(1 << 8) & 0xffffffff}]" in _fd(after, 10)
    assert "inet raw name=0.0.0.0:255 " in _fd(after, 11) and "hdrincl:1" in _fd(after, 11)
    assert "inet raw name=127.0.0.1:6 peer=127.0.0.1:0 " in _fd(after, 12) and "hdrincl:1" in _fd(after, 12)
    assert "inet6 raw name=::1:58 peer=::1:0 " in _fd(after, 13), _fd(after, 13)
    assert "icmp6_filter:[4294967295, 4294967295, 4294967295, 4294967295, 0, 0, 0, 0]" in _fd(after, 13)
    assert "inet6 raw name=:::200 " in _fd(after, 14) and "checksum6:4" in _fd(after, 14)
    from engine import forkrun, kernel

    def echo():
        kernel.setns(os.open(f"/proc/{after.pid}/ns/net", os.O_RDONLY), kernel.CLONE_NEWNET)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.sendto(struct.pack("!BBHHH", 8, 0, 0xf7fe, 1, 0) + b"x", ("127.0.0.1", 0))   # (its checksum: by hand)
        with socket.socket(fileno=grab_fd(after.pid, 10)) as r:
            r.settimeout(5)
            got = [r.recv(100)]
            r.setblocking(False)
            try:
                got.append(r.recv(100))
            except BlockingIOError:
                pass
        return [(g[20], g[28:]) for g in got]   # (ICMP type behind the IP header, data)
    assert forkrun.run(echo) == [(8, b"x")]   # (the request; the kernel's reply is filtered out)


def test_raw_packet_waiting_refused(case):
    """A raw socket with a packet waiting is refused before the stop (sent again, it would reach
    the namespace's ICMP too, which answers a request, and every other raw socket): the tree runs on."""
    pid = case.start(STOP_WATCH + _in_netns("""
import select, socket, struct
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
r.sendto(struct.pack("!BBHHH", 8, 0, 0xf7fe, 1, 0) + b"x", ("127.0.0.1", 0))
assert select.select([r], [], [], 60)[0], "no packet reached the raw socket"   # (waiting: the setup fails)
os.dup2(r.fileno(), 10); r.close()
"""))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"fd 10 .*packets wait on a raw socket \(protocol 1\)", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_raw_image_checked(case):
    """The validator: a raw socket names its protocol (0..262) and binds no port; a TCP or UDP
    socket has no protocol field."""
    from engine import image, imageformat
    pid = case.start(_in_netns(RAW))
    img = case.new_images_dir()
    case.dump(pid, img)
    imageformat.validate(load_manifest(img))
    for fd, change, text in ((10, lambda f: f.pop("protocol"), "names its protocol"),
                             (10, lambda f: f.update(protocol=263), "protocol"),
                             (10, lambda f: f.update(port=80), "binds no port"),
                             (10, lambda f: f["opts"].update(icmp_filter=[1, 2]), "icmp_filter"),
                             (13, lambda f: f["opts"].update(icmp_filter=[1]), "icmp_filter")):
        doc = load_manifest(img)
        change(next(f for f in doc["processes"][0]["fds"] if f["fd"] == fd))
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)


# A rootless tree: its process in a new user namespace (uid 0 there is 20000 outside) that owns its
# network namespace, holding a ping socket, a raw one and a packet one there.
ROOTLESS = """
import ctypes, socket, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x40000000) == 0   # CLONE_NEWUSER | CLONE_NEWNET
open("/tmp/unshared", "w").close()
while not os.path.exists("/tmp/mapped"):
    time.sleep(0.05)
os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
open("/proc/sys/net/ipv4/ping_group_range", "w").write("0 0")
p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); p.bind(("127.0.0.1", 99))
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); r.bind(("127.0.0.1", 0))
k = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x88cc)); k.bind(("lo", 0x88cc))
for n, s in ((10, p), (11, r), (12, k)): os.dup2(s.fileno(), n); s.close()
"""


def test_rootless_ping_raw_packet(case):
    """In a network namespace a rootless tree's user namespace owns: a ping socket (its group the
    one ping_group_range allows, 0 there), a raw one and a packet one come back as they were."""
    from tests.enginecase import py_hold
    setup = "(" + py_hold(ROOTLESS).strip() + ") </dev/null >/dev/null 2>&1 &\n" + """
wait_for /tmp/unshared
echo "0 20000 20000" > /proc/$!/uid_map; echo deny > /proc/$!/setgroups; echo "0 400000 50000" > /proc/$!/gid_map
touch /tmp/mapped
hold
"""
    before, after = case.roundtrip(setup)
    fds = "\n".join(after.snap.procs[-1].fds)
    assert "inet ping name=127.0.0.1:99 " in fds and "inet raw name=127.0.0.1:1 " in fds, fds
    assert "packet dgram protocol=35020 dev=lo " in fds, fds
