"""Classic BPF socket filters (SO_ATTACH_FILTER) on inet sockets of the tree (engine/fds/inet_filter.py):
read with SO_GET_FILTER, attached again to the restored socket, SO_LOCK_FILTER kept; an eBPF
filter and one on a TCP connection refused before the stop; the image's instructions bounded."""

from __future__ import annotations

import re
import socket

import pytest

from tests.enginecase import CRError, STOP_WATCH, case, grab_fd, load_manifest, was_stopped  # noqa: F401
from tests.test_engine_inet_ping import _fd, _in_netns

# Accept a datagram whose first byte (behind the 8 bytes of the UDP header, where a UDP socket's
# filter starts) is "y": ldb [8]; jeq #'y', 0, 1; ret #0xffff; ret #0.
ATTACH = """
import ctypes, socket, struct
def attach(s, insns):
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(code)))
YES = [(0x30, 0, 0, 8), (0x15, 0, 1, ord("y")), (0x06, 0, 0, 0xffff), (0x06, 0, 0, 0)]
"""

FILTERED = ATTACH + """
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 5000)); attach(u, YES)
os.dup2(u.fileno(), 10)
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); attach(r, [(0x06, 0, 0, 0)] * 3)
r.setsockopt(socket.SOL_SOCKET, 44, 1); os.dup2(r.fileno(), 11)   # SO_LOCK_FILTER
p = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6); attach(p, [(0x06, 0, 0, 64)])
os.dup2(p.fileno(), 12)
l = socket.socket(); l.bind(("127.0.0.1", 8080)); l.listen(); attach(l, [(0x06, 0, 0, 0xffff)]); os.dup2(l.fileno(), 13)
for s in (u, r, p, l): s.close()
"""


def test_filters_kept(case):
    """A UDP socket's filter (accept "y..." alone), a raw socket's locked filter, a ping socket's, a
    listener's: after C/R (twice) each socket has its instructions and lock, and the UDP socket's
    filter still drops what it dropped."""
    before, _, after = case.roundtrip(_in_netns(FILTERED), iters=2)
    assert "filter=[[48, 0, 0, 8], [21, 0, 1, 121], [6, 0, 0, 65535], [6, 0, 0, 0]]" in _fd(after, 10), _fd(after, 10)
    assert "filter=[[6, 0, 0, 0], [6, 0, 0, 0], [6, 0, 0, 0]]" in _fd(after, 11) and "lock_filter:1" in _fd(after, 11)
    assert "filter=[[6, 0, 0, 64]]" in _fd(after, 12) and "filter=[[6, 0, 0, 65535]]" in _fd(after, 13)
    from engine import forkrun

    def send():
        with socket.socket(fileno=grab_fd(after.pid, 10)) as u:   # (a sender in its namespace: itself)
            for data in (b"no", b"yes"):
                u.sendto(data, ("127.0.0.1", 5000))
            u.settimeout(5)
            return u.recv(10)
    assert forkrun.run(send) == b"yes"


EBPF = """
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
insns = struct.pack("BBhi", 0xb7, 0, 0, 0xffff) + struct.pack("BBhi", 0x95, 0, 0, 0)   # r0 = 0xffff; exit
code, lic = ctypes.create_string_buffer(insns), ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(struct.pack("IIQQ", 1, 2, ctypes.addressof(code), ctypes.addressof(lic)), 128)
fd = libc.syscall(321, 5, attr, 128)   # bpf(BPF_PROG_LOAD), BPF_PROG_TYPE_SOCKET_FILTER
assert fd >= 0, ctypes.get_errno()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setsockopt(socket.SOL_SOCKET, 50, fd)   # SO_ATTACH_BPF
os.dup2(u.fileno(), 10); u.close(); os.close(fd)   # (the socket holds the program)
"""

CONNECTED = ATTACH + """
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7000)); a, _ = l.accept(); attach(a, YES)
for n, s in ((10, c), (11, a)): os.dup2(s.fileno(), n); s.close()
l.close()
"""


@pytest.mark.parametrize("what,body,why", [
    ("ebpf", EBPF, r"fd 10 .*an eBPF socket filter \(SO_ATTACH_BPF"),
    ("connection", CONNECTED, r"fd 11 .*a TCP connection with a socket filter: not supported"),
])
def test_filter_refused_before_stop(case, what, body, why):
    """An eBPF filter, a filter on a TCP connection: refused naming the fd, before the stop."""
    pid = case.start(STOP_WATCH + _in_netns(body))
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(why, str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_filter_image_checked(case):
    """The validator bounds a filter (1..BPF_MAXINSNS instructions of four bounded numbers) and takes
    none on a TCP connection."""
    from engine import image, imageformat
    pid = case.start(_in_netns(FILTERED))
    img = case.new_images_dir()
    case.dump(pid, img)
    imageformat.validate(load_manifest(img))
    for change, text in ((lambda f: f.update(filter=[[6, 0, 0, 0]] * 4097), "4097 instructions"),
                         (lambda f: f.update(filter=[]), "0 instructions"),
                         (lambda f: f.update(filter=[[6, 0, 256, 0]]), "jf 0..255"),
                         (lambda f: f.update(filter=[[6, 0, 0, 1 << 32]]), "k 0..2"),
                         (lambda f: f.update(filter=[[6, 0, 0]]), "code")):
        doc = load_manifest(img)
        change(next(f for f in doc["processes"][0]["fds"] if f["fd"] == 10))
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)
