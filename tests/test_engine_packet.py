"""Packet sockets (AF_PACKET: dhclient's, tcpdump's, an LLDP agent's) of a network namespace the tree
owns (engine/fds/packet.py): type, protocol, the device bound by name, PACKET_* and SOL_SOCKET
options and a classic filter made again in the restored namespace; what cannot be made exactly
refused before the stop."""

from __future__ import annotations

import re
import socket
import struct

import pytest

from tests.enginecase import CRError, STOP_WATCH, case, grab_fd, load_manifest, py_hold, was_stopped  # noqa: F401
from tests.test_engine_inet_ping import _fd, _in_netns
from tests.test_engine_inet_filter import ATTACH

PACKETS = ATTACH + """
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); a.bind(("lo", 3))   # ETH_P_ALL on lo
a.setsockopt(263, 8, 1); a.setsockopt(263, 10, 1); a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
attach(a, [(0x06, 0, 0, 0xffff)]); os.dup2(a.fileno(), 10)   # (PACKET_AUXDATA, PACKET_VERSION TPACKET_V2)
d = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x88cc)); os.dup2(d.fileno(), 11)   # LLDP
n = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); os.dup2(n.fileno(), 12)   # (not running)
for s in (a, d, n): s.close()
"""


def test_packet_sockets_kept(case):
    """A raw ETH_P_ALL socket bound to lo (auxdata, TPACKET_V2, a receive buffer, a filter), an
    unbound LLDP dgram one, one of protocol 0: after C/R (twice) each is there as it was, the lo
    one bound to the restored lo, and it sees a packet sent on lo there."""
    before, _, after = case.roundtrip(_in_netns(PACKETS), iters=2)
    assert "packet raw protocol=3 dev=lo " in _fd(after, 10), _fd(after, 10)
    assert "auxdata:1" in _fd(after, 10) and "version:1" in _fd(after, 10) and "rcvbuf:131072" in _fd(after, 10)
    assert "filter=[[6, 0, 0, 65535]]" in _fd(after, 10)
    assert "packet dgram protocol=35020 dev= " in _fd(after, 11) and "packet raw protocol=0 dev= " in _fd(after, 12)
    from engine import forkrun

    def sniff():
        with socket.socket(fileno=grab_fd(after.pid, 10)) as a:
            a.sendto(b"\0" * 12 + b"\x88\xb5" + b"sniffed", ("lo", 0x88b5))   # (a local experimental ethertype)
            a.settimeout(5)
            while True:
                data = a.recv(100)
                if data[12:14] == b"\x88\xb5":
                    return data[14:21]
    assert forkrun.run(sniff) == b"sniffed"


# A TPACKET_V2 raw socket with a receive ring its process maps (rw, private), promiscuous on lo; two
# dgram ETH_P_IP sockets bound to lo in one fanout group (hash, defrag), one with a transmit ring
# (TPACKET_V1) and a unicast membership added twice.
RINGS = """
import socket, struct, mmap
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); a.setsockopt(263, 10, 1)   # PACKET_VERSION V2
a.setsockopt(263, 5, struct.pack("IIII", 4096, 2, 1024, 8))   # PACKET_RX_RING: two blocks of four frames
ring = mmap.mmap(a.fileno(), 8192, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
a.setsockopt(263, 1, struct.pack("iHH8s", 1, 1, 0, b""))   # PACKET_ADD_MEMBERSHIP lo, PACKET_MR_PROMISC
b = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x800)); b.bind(("lo", 0x800))
c = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x800)); c.bind(("lo", 0x800))
b.setsockopt(263, 13, struct.pack("IIII", 4096, 1, 2048, 2))   # PACKET_TX_RING
for s in (b, c): s.setsockopt(263, 18, struct.pack("I", 13 | 0x8000 << 16))   # PACKET_FANOUT: 13, hash, defrag
for _ in range(2): b.setsockopt(263, 1, struct.pack("iHH8s", 1, 3, 6, b"\\x02" * 6))   # PACKET_MR_UNICAST
for n, s in ((10, a), (11, b), (12, c)): os.dup2(s.fileno(), n)
"""


def test_packet_rings_fanout_memberships_kept(case):
    """Rings (one mapped by its process), a fanout group of two sockets and memberships: after C/R
    (twice) each socket has them as it had, the mapped ring mapped again (whole, by its process)."""
    before, _, after = case.roundtrip(_in_netns(RINGS), iters=2)
    assert "rings={'rx': [4096, 2, 1024, 8, 0, 0, 0]} fanout=0x0 mclist=[{'dev': 'lo', 'type': 1, 'addr': '', " \
           "'count': 1}]" in _fd(after, 10), _fd(after, 10)
    assert "rings={'tx': [4096, 1, 2048, 2, 0, 0, 0]} fanout=0x8000000d mclist=[{'dev': 'lo', 'type': 3, " \
           "'addr': '020202020202', 'count': 2}]" in _fd(after, 11), _fd(after, 11)
    assert "rings={} fanout=0x8000000d mclist=[]" in _fd(after, 12), _fd(after, 12)
    assert "socket ring 8192 bytes" in after.snap.procs[0].maps, after.snap.procs[0].maps


@pytest.mark.parametrize("what,body,why", [
    ("mapped twice", """
import socket, struct, mmap
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
a.setsockopt(263, 5, struct.pack("IIII", 4096, 1, 4096, 1))   # PACKET_RX_RING: one block, one frame
m1, m2 = mmap.mmap(a.fileno(), 4096), mmap.mmap(a.fileno(), 4096)
os.dup2(a.fileno(), 10); a.close()
""", r"fd \d+ .*whose ring is mapped other than once, whole, by the process of this fd"),
    ("rx frame waiting", """
import socket, struct, mmap, time
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); a.setsockopt(263, 10, 1)   # TPACKET_V2
a.setsockopt(263, 5, struct.pack("IIII", 4096, 1, 2048, 2)); a.bind(("lo", 3))   # PACKET_RX_RING
ring = mmap.mmap(a.fileno(), 4096)
a.sendto(bytes(12) + b"\\x88\\xb5" + b"waits", ("lo", 0x88b5))
deadline = time.monotonic() + 60
while not struct.unpack_from("I", ring, 0)[0] & 1 and not struct.unpack_from("I", ring, 2048)[0] & 1:
    assert time.monotonic() < deadline, "no frame came"
    time.sleep(0.05)
os.dup2(a.fileno(), 10); a.close()
""", r"fd \d+ .*a packet socket with received packets in its rx ring that the program has not read"),
    ("tx frame queued", """
import socket, struct, mmap
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); a.setsockopt(263, 10, 1); a.bind(("lo", 3))
a.setsockopt(263, 13, struct.pack("IIII", 4096, 1, 2048, 2))   # PACKET_TX_RING
ring = mmap.mmap(a.fileno(), 4096); struct.pack_into("I", ring, 0, 1)   # TP_STATUS_SEND_REQUEST, no send()
os.dup2(a.fileno(), 10); a.close()
""", r"fd \d+ .*a packet socket with frames in its tx ring not sent yet"),
    ("fanout bpf", """
import socket
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); a.setsockopt(263, 18, 7 | 6 << 16)
os.dup2(a.fileno(), 10); a.close()
""", r"fd 10 .*a fanout group that runs a BPF program \(PACKET_FANOUT_CBPF"),
    ("host", None, r"host's network namespace"),
])
def test_packet_refused_before_stop(case, what, body, why):
    """A ring mapped twice, frames waiting in a ring (received, not read; queued, not sent), a fanout
    group with a BPF program, a packet socket of the host's network namespace: refused naming the
    fd, before the stop."""
    host = """
import socket
a = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0); os.dup2(a.fileno(), 10); a.close()
"""
    pid = case.start(STOP_WATCH + (py_hold(host) if body is None else _in_netns(body)))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(why, str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_packet_image_checked(case):
    """The validator: a device name as the kernel allows one, known PACKET_* options, SOL_SOCKET
    options only, a protocol of 16 bits, rings of seven numbers, a mapping of rings it has, a
    fanout restore can join, memberships of a named device; a packet socket in the restorer's own
    namespace refused."""
    from engine import image, imageformat
    pid = case.start(_in_netns(PACKETS))
    img = case.new_images_dir()
    case.dump(pid, img)
    imageformat.validate(load_manifest(img))
    for change, text in ((lambda f: f.update(dev="x" * 16), "device name"),
                         (lambda f: f.update(dev="../lo"), "device name"),
                         (lambda f: f["popts"].update(rx_ring=1), "PACKET_"),
                         (lambda f: f["opts"].update(ttl=1), "SOL_SOCKET"),
                         (lambda f: f.update(protocol=1 << 16), "protocol"),
                         (lambda f: f.update(type="packet"), "raw or dgram"),
                         (lambda f: f.update(rings={"rx": [1] * 6}), "rings"),
                         (lambda f: f.update(rings={"rx": [1] * 7}, mapped="rwxp"), "ring mapping"),
                         (lambda f: f.update(rings={"rx": [1 << 31, 1 << 16, 4096, (1 << 32) - 1, 0, 0, 0]}),
                          r"rx ring of 140737488355328 bytes \(block_size x block_nr\): more than 1024 MiB"),
                         (lambda f: f.update(rings={"tx": [4096, (1 << 18) + 1, 4096, (1 << 18) + 1, 0, 0, 0]}),
                          "tx ring of 1073745920 bytes"),
                         (lambda f: f.update(mapped="rw-p"), "ring mapping"),
                         (lambda f: f.update(fanout=7 | 6 << 16), "fanout"),
                         (lambda f: f.update(mclist=[{"dev": "../lo", "type": 1, "addr": "", "count": 1}]),
                          "memberships"),
                         (lambda f: f.update(mclist=[{"dev": "lo", "type": 9, "addr": "", "count": 1}]),
                          "memberships"),
                         (lambda f: f.update(mclist=[{"dev": "lo", "type": 1, "addr": "zz", "count": 1}]),
                          "memberships")):
        doc = load_manifest(img)
        change(next(f for f in doc["processes"][0]["fds"] if f["fd"] == 10))
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)
    doc = load_manifest(img)   # (three sockets, each 2 GiB of rings: each ring passes, together 6 GiB do not)
    for f in doc["processes"][0]["fds"]:
        if f.get("kind") == "packet":
            f["rings"] = {"rx": [1 << 22, 256, 1 << 22, 256, 0, 0, 0], "tx": [1 << 22, 256, 1 << 22, 256, 0, 0, 0]}
    with pytest.raises(image.ImageError, match=r"the image's packet sockets' rings take 6442450944 bytes: more than "
                                               r"restore makes \(4096 MiB in all\)"):
        imageformat.validate(doc)
    doc = load_manifest(img)
    doc["processes"][0]["host_ns"] = sorted(set(doc["processes"][0].get("host_ns", [])) | {"net"})
    with pytest.raises(image.ImageError, match="restorer's own network namespace"):
        imageformat.validate(doc)


def test_packet_rings_too_big_refused_at_dump():
    """Dump (and its check before the stop) refuses a ring past what the validator takes, and rings
    past the tree's bound together (each socket once), without mapping them (engine/fds/packet.py
    `read`, `MAX_RING_BYTES`, `MAX_RINGS_BYTES`): it read them through a mapping of their whole size."""
    import os
    import types
    from engine.fds import FdError, packet
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    except PermissionError:
        pytest.skip("a packet socket needs CAP_NET_RAW")
    with s:
        d = types.SimpleNamespace(where="fd 10", pid=os.getpid(), scratch={})
        rec = {"rings": {"rx": [1 << 30, 2, 1 << 30, 2, 0, 0, 0]}, "ifindex": 0, "uid": None, "mclist": []}
        with pytest.raises(FdError, match=r"fd 10: a packet socket's rx ring of 2147483648 bytes \(block_size x "
                                          r"block_nr\): more than 1024 MiB: more than restore makes"):
            packet.read(d, s, rec)
        d.scratch["packet-ring-bytes"] = {1: 3 << 30, 2: 1 << 30}   # (two others, 4 GiB: the bound reached)
        rec["rings"] = {"tx": [4096, 1, 4096, 1, 0, 0, 0]}
        with pytest.raises(FdError, match=r"fd 10: the tree's packet sockets' rings take 4294971392 bytes: more "
                                          r"than restore makes \(4096 MiB in all\)"):
            packet.read(d, s, rec)
