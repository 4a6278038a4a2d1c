"""ICMP "ping sockets" (SOCK_DGRAM, IPPROTO_ICMP and IPPROTO_ICMPV6: an unprivileged ping's, which
net.ipv4.ping_group_range allows) of a network namespace the tree owns (engine/fds/inet.py,
inet_ping.py): bound to an identifier or not, connected or not, their options, and the echo
replies waiting on them, made again exactly in the restored namespace."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from tests.enginecase import CRError, STOP_WATCH, case, grab_fd, load_manifest, py_hold, was_stopped  # noqa: F401

# (root's group and a user's may make ping sockets, in the holder's namespace alone)
RANGE = 'echo "0 2147483647" > /proc/sys/net/ipv4/ping_group_range; '


def _in_netns(body: str) -> str:
    hold = py_hold(body)
    return f"exec unshare -n sh -c 'ip link set lo up; {RANGE}exec \"$0\" \"$@\"' " + hold[len("exec "):]


def _fd(state, n: int) -> str:
    return next(line for line in state.snap.procs[0].fds if line.startswith(f"{n}: "))


ECHO = """
import socket, struct, time
def echo(s, host, ident=0, seq=1, data=b"", v6=False):
    s.sendto(struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, seq) + data, (host, 0))
def wait(s):   # (until a reply waits on s: SO_MEMINFO's rmem_alloc; none in 60 s fails the setup)
    deadline = time.monotonic() + 60
    while not struct.unpack_from("=I", s.getsockopt(socket.SOL_SOCKET, 55, 36))[0]:
        assert time.monotonic() < deadline, "no echo reply arrived"
        time.sleep(0.01)
"""

SOCKETS = ECHO + """
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); os.dup2(u.fileno(), 10)
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); b.bind(("127.0.0.1", 4242))
b.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 9); b.setsockopt(socket.IPPROTO_IP, 11, 1)   # IP_RECVERR
b.setsockopt(socket.IPPROTO_IP, 12, 1); os.dup2(b.fileno(), 11)   # IP_RECVTTL
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); c.connect(("127.0.0.1", 0))
os.dup2(c.fileno(), 12)
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); echo(a, "127.0.0.1", data=b"one")
echo(a, "127.0.0.1", seq=2, data=b"two"); wait(a); os.dup2(a.fileno(), 13)
v = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6); v.bind(("::1", 777))
v.setsockopt(socket.IPPROTO_IPV6, 51, 1); echo(v, "::1", data=b"six", v6=True); wait(v)   # IPV6_RECVHOPLIMIT
v.connect(("::1", 0)); os.dup2(v.fileno(), 14)
for s in (u, b, c, a, v): s.close()
os.setgid(1000); os.setuid(1000)   # (a user's, made as the user: its group in ping_group_range)
p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); echo(p, "127.0.0.1"); os.dup2(p.fileno(), 15)
"""


def _replies(pid: int, fd: int, v6: bool = False) -> list[tuple[int, int, bytes, str]]:
    """(type, seq, data, sender) of each echo reply waiting on fd `fd` of `pid`, taken."""
    out = []
    with socket.socket(fileno=grab_fd(pid, fd)) as s:
        while True:
            try:
                msg, addr = s.recvfrom(1000, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            typ, _c, _s, _i, seq = struct.unpack_from("!BBHHH", msg)
            out.append((typ, seq, msg[8:], addr[0]))


def test_ping_sockets_kept(case):
    """Ping sockets unbound, bound to an identifier (with TTL, IP_RECVERR, IP_RECVTTL), connected
    (port 0: no getpeername), autobound by a send, IPv6 bound and connected, one a user made: after
    C/R (twice) each is there with its identifier, peer and options, and the echo replies that
    waited are there again, in order, from their senders; the sockets ping again."""
    before, _, after = case.roundtrip(_in_netns(SOCKETS), iters=2)
    assert "inet ping name=0.0.0.0:0" in _fd(after, 10)
    assert "inet ping name=127.0.0.1:4242" in _fd(after, 11) and "ttl:9" in _fd(after, 11), _fd(after, 11)
    assert "recverr:1" in _fd(after, 11) and "recvttl:1" in _fd(after, 11)
    assert "peer=127.0.0.1:0" in _fd(after, 12), _fd(after, 12)
    assert "inet ping name=0.0.0.0:" in _fd(after, 13) and "name=0.0.0.0:0 " not in _fd(after, 13)
    assert "inet6 ping name=::1:777 peer=::1:0 " in _fd(after, 14) and "recvhoplimit:1" in _fd(after, 14)
    assert "uid=1000" in _fd(before, 15) and "uid=1000" in _fd(after, 15), _fd(after, 15)
    assert _replies(after.pid, 13) == [(0, 1, b"one", "127.0.0.1"), (0, 2, b"two", "127.0.0.1")]
    assert _replies(after.pid, 14) == [(129, 1, b"six", "::1")]
    # (the restored ones ping: the reply reaches the socket of that identifier)
    from engine import forkrun

    def ping_again():
        with socket.socket(fileno=grab_fd(after.pid, 11)) as s:   # (its namespace's, wherever we are)
            s.settimeout(5)
            s.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 7) + b"again", ("127.0.0.1", 0))
            msg, _a = s.recvfrom(100)
            return struct.unpack_from("!BBHHH", msg)[4], msg[8:]
    assert forkrun.run(ping_again) == (7, b"again")


def test_ping_replies_leave_running(case):
    """A --leave-running dump reads the echo replies and gives them back: the tree finds them."""
    pid = case.start(_in_netns(SOCKETS))
    case.dump(pid, case.new_images_dir(), extra=("--leave-running",))
    assert _replies(pid, 13) == [(0, 1, b"one", "127.0.0.1"), (0, 2, b"two", "127.0.0.1")]


def test_ping_image_checked(case):
    """The validator takes only echo replies to the socket's own identifier from loopback: nothing
    else is sent into the restored namespace."""
    import base64
    from engine import image, imageformat
    pid = case.start(_in_netns(SOCKETS))
    img = case.new_images_dir()
    case.dump(pid, img)
    doc = load_manifest(img)
    imageformat.validate(doc)
    f = next(f for f in doc["processes"][0]["fds"] if f["fd"] == 13)
    assert f["proto"] == "ping" and len(f["replies"]) == 2, f
    request = base64.b64encode(struct.pack("!BBHHH", 8, 0, 0, f["port"], 1)).decode()
    other = base64.b64encode(struct.pack("!BBHHH", 0, 0, 0, f["port"] ^ 1, 1)).decode()
    for change, text in ((lambda r: r.update({"from": "10.1.1.1"}), "off loopback"),
                         (lambda r: r.update({"data": request}), "not an echo reply"),
                         (lambda r: r.update({"data": other}), "not an echo reply")):
        doc = load_manifest(img)
        change(next(f for f in doc["processes"][0]["fds"] if f["fd"] == 13)["replies"][0])
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)


_SHARED_BUCKET = """
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from engine.fds import inet_proc
with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
    f.write("0 2147483647")
os.system("ip link set lo up")
four = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
four.bind(("127.0.0.1", 4242)); four.connect(("127.0.0.1", 0))
six = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
six.bind(("::1", 4242))   # (the same identifier: the same bucket, ahead of the IPv4 one)
ino = os.fstat(four.fileno()).st_ino
listed6 = any(line.split()[9] == str(ino) for line in open("/proc/net/icmp6").read().splitlines()[1:])
print(json.dumps({"listed6": listed6, "rec": inet_proc._all()[socket.AF_INET][ino]}))
"""


def test_an_ipv4_ping_socket_listed_in_icmp6_too_keeps_its_record():
    """The kernel's walk of a ping hash bucket checks the family of its first socket only: an IPv4
    ping socket behind an IPv6 one of the same identifier shows in /proc/net/icmp6 too, with '::'
    for its addresses. Read as one table, that record replaced the IPv4 one: dump refused the socket
    as 'connected to :: port 0, off loopback' now and then (when identifiers met by chance)."""
    import json
    import os
    import subprocess
    import sys
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["unshare", "-n", sys.executable, "-S", "-c", _SHARED_BUCKET, root], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    rec = got["rec"]
    assert tuple(rec["local"]) == ("127.0.0.1", 4242) and tuple(rec["remote"]) == ("127.0.0.1", 0), got
    print("icmp6 lists the IPv4 socket too:", got["listed6"])
