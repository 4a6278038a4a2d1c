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


@pytest.mark.parametrize("what,body,why", [
    ("ring", """
import socket, struct
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
a.setsockopt(263, 5, struct.pack("IIII", 4096, 1, 4096, 1))   # PACKET_RX_RING: one block, one frame
os.dup2(a.fileno(), 10); a.close()
""", r"fd 10 .*a mapped ring \(PACKET_RX_RING"),
    ("fanout", """
import socket
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); a.setsockopt(263, 18, 7)   # PACKET_FANOUT
os.dup2(a.fileno(), 10); a.close()
""", r"fd 10 .*a fanout group \(PACKET_FANOUT\)"),
    ("promisc", """
import socket, struct
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
a.setsockopt(263, 1, struct.pack("iHH8s", socket.if_nametoindex("lo"), 1, 0, b""))   # PACKET_ADD_MEMBERSHIP, MR_PROMISC
os.dup2(a.fileno(), 10); a.close()
""", r"fd 10 .*a multicast or promiscuous membership"),
    ("host", None, r"host's network namespace"),
])
def test_packet_refused_before_stop(case, what, body, why):
    """A ring, a fanout group, a membership, a packet socket of the host's network namespace:
    refused naming the fd, before the stop."""
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
    options only, a protocol of 16 bits; a packet socket in the restorer's own namespace refused."""
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
                         (lambda f: f.update(type="packet"), "raw or dgram")):
        doc = load_manifest(img)
        change(next(f for f in doc["processes"][0]["fds"] if f["fd"] == 10))
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)
    doc = load_manifest(img)
    doc["processes"][0]["host_ns"] = sorted(set(doc["processes"][0].get("host_ns", [])) | {"net"})
    with pytest.raises(image.ImageError, match="restorer's own network namespace"):
        imageformat.validate(doc)
