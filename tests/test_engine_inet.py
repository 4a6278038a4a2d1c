"""Inet sockets of a network namespace the tree owns (engine/fds/inet.py): listeners, bound and
unbound sockets made again exactly in the restored namespace (lo up as it was), and the refusals,
before the stop, of what cannot be made exactly."""

from __future__ import annotations

import os
import re

import pytest

from tests.enginecase import (CRError, DUMP_EXTERNALS, STOP_WATCH, case, mntcr, py_hold,  # noqa: F401  (fixture)
                              was_stopped)

# The holder's network namespace: its own, lo up (the setup runs `unshare -n` first).
NETNS = "exec unshare -n sh -ec 'ip link set lo up; exec \"$0\" \"$@\"' "


def _in_netns(body: str, lo: bool = True) -> str:
    """A setup whose Python holder runs `body` in a network namespace of its own (lo up when `lo`)."""
    hold = py_hold(body)
    assert hold.startswith("exec python3 -c ")
    up = "ip link set lo up; " if lo else ""
    return f"exec unshare -n sh -c '{up}exec \"$0\" \"$@\"' " + hold[len("exec "):]


def _fd(state, n: int, proc: int = 0) -> str:
    return next(line for line in state.snap.procs[proc].fds if line.startswith(f"{n}: "))


SERVE = """
import socket
def serve(port, fam=socket.AF_INET, host="127.0.0.1"):
    with socket.socket(fam) as c:
        c.settimeout(5); c.connect((host, port)); c.sendall(b"ping")
"""


def test_listeners_bound_unbound(case):
    """TCP listeners on 127.0.0.1 and ::1 (with their backlog, nodelay, keepalive), a UDP socket
    bound to a port, an unbound TCP socket, a SO_REUSEPORT pair on one port, a nonblocking v6-only
    listener on :: : after C/R each is there with the same name, state and options, and the
    listener accepts a connection made from inside the restored namespace."""
    setup = _in_netns("""
import socket
t4 = socket.socket(); t4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t4.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); t4.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
t4.bind(("127.0.0.1", 8080)); t4.listen(7); os.dup2(t4.fileno(), 10)
t6 = socket.socket(socket.AF_INET6); t6.bind(("::1", 8081)); t6.listen(3); os.dup2(t6.fileno(), 11)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 5353)); os.dup2(u.fileno(), 12)
n = socket.socket(); os.dup2(n.fileno(), 13)
for fd in (14, 15):
    r = socket.socket(); r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); r.bind(("0.0.0.0", 9090)); r.listen()
    os.dup2(r.fileno(), fd); r.close()
v = socket.socket(socket.AF_INET6); v.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v.setblocking(False); v.bind(("::", 8443)); v.listen(); os.dup2(v.fileno(), 16)
e = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); e.bind(("127.0.0.1", 0)); os.dup2(e.fileno(), 17)
for s in (t4, t6, u, n, v, e): s.close()
""")
    # (the check runs in the tree's mount and pid namespaces, not its network one: pid 1 is the holder)
    check = "nsenter -t 1 -n ip -o link show lo | grep -o 'state [A-Z]*'; nsenter -t 1 -n ip -o addr show lo | awk '{print $3, $4}'"
    before, _, after = case.roundtrip(setup, check=check, iters=2)
    assert "state UNKNOWN" in after.snap.check_output and "::1/128" in after.snap.check_output, after.snap.check_output
    assert "inet tcp name=127.0.0.1:8080 state=LISTEN backlog=7" in _fd(after, 10)
    assert "nodelay:1" in _fd(after, 10) and "keepalive:1" in _fd(after, 10)
    assert "inet6 tcp name=::1:8081 state=LISTEN backlog=3" in _fd(after, 11)
    assert "inet udp name=127.0.0.1:5353" in _fd(after, 12)
    assert "inet tcp name=0.0.0.0:0 state=CLOSE" in _fd(after, 13)
    assert "reuseport:1" in _fd(after, 14) and "name=0.0.0.0:9090" in _fd(after, 15)
    assert "v6only:1" in _fd(after, 16) and "flags=4002" in _fd(after, 16)
    port = re.search(r"name=127\.0\.0\.1:(\d+)", _fd(before, 17))[1]
    assert port != "0" and f"name=127.0.0.1:{port}" in _fd(after, 17)
    # The restored listeners serve: a client in the restored namespace connects; the listener accepts.
    pid = after.pid
    from engine import forkrun, kernel
    import os
    import socket

    def talk():
        kernel.setns(os.open(f"/proc/{pid}/ns/net", os.O_RDONLY), kernel.CLONE_NEWNET)
        got = []
        for fam, host, port in ((socket.AF_INET, "127.0.0.1", 8080), (socket.AF_INET6, "::1", 8081)):
            with socket.socket(fam) as c:
                c.settimeout(5)
                c.connect((host, port))
                c.sendall(b"ping")
            got.append(port)
        return got

    assert forkrun.run(talk) == [8080, 8081]
    from engine.fds import sys as fsys
    pidfd = kernel.pidfd_open(pid)
    try:
        for n in (10, 11):
            with socket.socket(fileno=fsys.pidfd_getfd(pidfd, n)) as lst:
                lst.settimeout(5)
                conn, _ = lst.accept()
                with conn:
                    assert conn.recv(4) == b"ping"
    finally:
        os.close(pidfd)


def test_lo_down_kept(case):
    """A namespace whose lo is down comes back with lo down (a socket bound to 127.0.0.1 is made
    there as it was)."""
    setup = _in_netns("""
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 5000)); os.dup2(u.fileno(), 10); u.close()
""", lo=False)
    before, after = case.roundtrip(setup, check="nsenter -t 1 -n ip -o link show lo | grep -o 'state [A-Z]*'")
    assert "state DOWN" in after.snap.check_output
    assert "name=127.0.0.1:5000" in _fd(after, 10)


@pytest.mark.parametrize("what,body,lo,why", [
    ("host", """
import socket
s = socket.socket(); os.dup2(s.fileno(), 10)
""", None, r"host's network namespace .*not supported"),
    ("reset", """
import socket, struct
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen()
c = socket.socket(); c.connect(("127.0.0.1", 7000)); a, _ = l.accept(); l.close()
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); a.close()   # (an RST)
import time
while c.getsockopt(socket.SOL_TCP, socket.TCP_INFO, 1)[0] != 7:   # (CLOSE, its ECONNRESET not read)
    time.sleep(0.05)
os.dup2(c.fileno(), 10)
""", True, r"fd \d+ .*a TCP socket whose connection ended holds an error its program has not read .*dump again "
           r"once the program has read it"),
    ("pending_client_gone", """
import socket
l = socket.socket(); l.bind(("127.0.0.1", 7000)); l.listen(); os.dup2(l.fileno(), 10)
c = socket.socket(); c.connect(("127.0.0.1", 7000)); c.close()
""", True, r"fd 10 .*1 connection\(s\) waiting to be accepted, 0 of them from clients the tree holds"),
    ("udp_peek_offset", """
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 7001)); os.dup2(u.fileno(), 10)
u.setsockopt(socket.SOL_SOCKET, 42, 0)   # SO_PEEK_OFF
u.sendto(b"x", ("127.0.0.1", 7001))
""", True, r"UDP datagrams wait on a socket with a peek offset"),
    ("interface", """
import socket, subprocess
subprocess.run("ip link add br9 type bridge; ip link add mv9 link br9 type macvlan", shell=True, check=True)
s = socket.socket(); os.dup2(s.fileno(), 10)
""", True, r"interface mv9 is of kind macvlan, which restore does not make"),
    ("address", """
import socket, subprocess
subprocess.run(["ip", "addr", "add", "10.9.9.9/32", "dev", "lo", "valid_lft", "100", "preferred_lft", "100"], check=True)
s = socket.socket(); os.dup2(s.fileno(), 10)
""", True, r"address 10\.9\.9\.9/32 of lo has a finite lifetime"),
    ("route", """
import socket, subprocess
subprocess.run(["ip", "route", "add", "throw", "10.0.0.0/8"], check=True)
s = socket.socket(); os.dup2(s.fileno(), 10)
""", True, r"route 10\.0\.0\.0/8 \(table 254\) is type 9, which restore does not make"),
    ("multicast", """
import socket, struct
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 5353)); os.dup2(u.fileno(), 10)
u.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("224.0.0.251") + socket.inet_aton("127.0.0.1"))
""", True, r"multicast memberships .*lo FB0000E0 1"),
    ("mptcp", """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262); os.dup2(s.fileno(), 10)   # IPPROTO_MPTCP
""", True, r"fd \d+ .*inet socket \(protocol 262\): not supported"),
])
def test_refused_before_stop(case, what, body, lo, why):
    """What cannot be made exactly is refused naming the fd, before the tree is stopped; it keeps running."""
    setup = py_hold(body) if lo is None else _in_netns(body, lo)
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(why, str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_pinned_netns_refused(case, tmp_path):
    """A network namespace bound to a file (`ip netns add`, a runtime's netns file) is not the tree's
    alone: its inet socket is refused before the stop."""
    from zdtm.snapshot import tree_pids
    setup = _in_netns("""
import socket
s = socket.socket(); s.bind(("127.0.0.1", 8080)); s.listen(); os.dup2(s.fileno(), 10); s.close()
""")
    pid = case.start(STOP_WATCH + setup)
    holder = next(p for p in tree_pids(pid)
                  if os.readlink(f"/proc/{p}/ns/net") != os.readlink("/proc/self/ns/net"))
    # (bound in a private mount namespace of the dumper's own, never the host's)
    bind = f"touch {tmp_path}/netns && mount --bind /proc/{holder}/ns/net {tmp_path}/netns && exec \"$@\""
    r = mntcr("dump", "-t", str(pid), "-D", case.new_images_dir(), *DUMP_EXTERNALS,
              wrap=("unshare", "-m", "--propagation", "private", "sh", "-c", bind, "-"))
    assert r.returncode != 0 and re.search(r"network namespace is bound at .*/netns", r.stderr), r.stderr
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_image_inet_in_host_netns_refused(case, tmp_path):
    """An image whose inet socket is in the restorer's own network namespace is refused: restore
    never binds a port of a namespace it did not create."""
    from tests.enginecase import load_manifest
    from engine import imageformat, image
    setup = _in_netns("""
import socket
s = socket.socket(); s.bind(("127.0.0.1", 8080)); s.listen(); os.dup2(s.fileno(), 10); s.close()
""")
    pid = case.start(setup)
    img = case.new_images_dir()
    case.dump(pid, img)
    doc = load_manifest(img)
    imageformat.validate(doc)
    doc["processes"][0]["host_ns"] = sorted(set(doc["processes"][0].get("host_ns", [])) | {"net"})
    with pytest.raises(image.ImageError, match="restorer's own network namespace"):
        imageformat.validate(doc)
    for key, value, text in (("port", 70000, "port"), ("addr", "1.2.3.400", "bad inet addr"),
                             ("family", "unix", "family"), ("addr", "::1", "not of family inet")):
        doc = load_manifest(img)
        f = next(f for f in doc["processes"][0]["fds"] if f.get("kind") == "inet")
        f[key] = value
        with pytest.raises(image.ImageError, match=text):
            imageformat.validate(doc)


def test_shared_listener_owner(case):
    """A listener shared by a server and its forked worker (a prefork server), with O_ASYNC and the
    worker as its signal owner (F_SETOWN, F_SETSIG), and a UDP socket the worker made as uid 1000:
    one open file description again, in both processes, with its owner and flags; the UDP socket
    owned by uid 1000 again (sk_uid)."""
    setup = _in_netns("""
import fcntl, signal, socket, time
l = socket.socket(); l.bind(("127.0.0.1", 8080)); l.listen(4); os.dup2(l.fileno(), 10); l.close()
r, w = os.pipe()
if os.fork() == 0:
    fcntl.fcntl(10, fcntl.F_SETOWN, os.getpid()); fcntl.fcntl(10, 10, signal.SIGUSR1)   # F_SETSIG
    fcntl.fcntl(10, fcntl.F_SETFL, fcntl.fcntl(10, fcntl.F_GETFL) | os.O_ASYNC)
    os.setresuid(1000, 1000, 0)   # (a worker dropped to a user: its own socket is that user's, sk_uid)
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::1", 5000)); os.dup2(u.fileno(), 11); u.close()
    os.setresuid(0, 0, 0)
    os.write(w, b"x")
else:
    os.read(r, 1)
""")
    before, after = case.roundtrip(setup)
    assert "description P0:10 P1:10" in after.snap.sharing, after.snap.sharing
    assert "inet tcp name=127.0.0.1:8080 state=LISTEN backlog=4" in _fd(after, 10, 1)
    assert "async-owner=" in _fd(after, 10, 1) and "flags=20002" in _fd(after, 10, 1), _fd(after, 10, 1)
    assert "inet6 udp name=::1:5000" in _fd(after, 11, 1) and " uid=1000 " in _fd(after, 11, 1), _fd(after, 11, 1)
    assert " uid=0 " in _fd(after, 10, 1)


def test_owner_unmapped_refused(case):
    """A socket made by root that its process took into a user namespace mapping only uid 100000:
    its owner is no uid the stand-in could take there, refused before the stop."""
    setup = _in_netns("""
import ctypes, socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 6000)); os.dup2(u.fileno(), 10); u.close()
assert ctypes.CDLL(None).unshare(0x10000000) == 0   # CLONE_NEWUSER
open("/run/.unshared", "w").close()
while not os.path.exists("/run/.mapped"):
    time.sleep(0.02)
""").replace("exec unshare -n sh -c", "unshare -n sh -c", 1).rstrip("\n") + " &\n" + """
wait_for /run/.unshared
echo deny > /proc/$!/setgroups; echo "0 100000 1" > /proc/$!/uid_map; echo "0 100000 1" > /proc/$!/gid_map
touch /run/.mapped
hold
"""
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"fd 10 .*owned by uid 0, which its process's user namespace does not map", str(err.value)), \
        err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


@pytest.mark.parametrize("first", ["off", "on"])
def test_reuseport_turned_off_beside_a_second_listener(case, first):
    """Two listeners on one port with SO_REUSEPORT, the first of them turned it off once the second
    was bound (CRIU's socket-tcp-reuseport): neither could bind beside the other as it is now, so
    restore failed (EADDRINUSE). Both come back, each with its own SO_REUSEPORT, whichever is made
    first (`first`: the one turned off has the lower fd, or the higher)."""
    off, on = (20, 21) if first == "off" else (21, 20)
    setup = _in_netns(f"""
import socket
made = {{}}
for fd in ({off}, {on}):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 9191)); s.listen(); os.dup2(s.fileno(), fd); s.close()
with socket.socket(fileno=os.dup({off})) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
""")
    before, after = case.roundtrip(setup)
    for state in (before, after):
        assert "reuseport:0" in _fd(state, off) and "name=127.0.0.1:9191 state=LISTEN" in _fd(state, off)
        assert "reuseport:1" in _fd(state, on) and "name=127.0.0.1:9191 state=LISTEN" in _fd(state, on)


UDPLITE = """
import socket
def lite(fam=socket.AF_INET):
    return socket.socket(fam, socket.SOCK_DGRAM, 136)   # IPPROTO_UDPLITE
a = lite(); a.bind(("127.0.0.1", 7100))
a.setsockopt(136, 11, 8)   # UDPLITE_RECV_CSCOV: 8 bytes (the header) at least
b = lite(); b.bind(("127.0.0.1", 7101)); b.connect(("127.0.0.1", 7100))
b.setsockopt(136, 10, 12)  # UDPLITE_SEND_CSCOV: the header and 4 bytes of data
c = lite(socket.AF_INET6); c.bind(("::1", 7102))
try:
    c.shutdown(socket.SHUT_RD)
except OSError:   # (ENOTCONN, the direction shut down all the same)
    pass
u = lite()   # (not bound)
for n, s in ((10, a), (11, b), (12, c), (13, u)):
    os.dup2(s.fileno(), n); s.close()
"""


def test_udplite_kept(case):
    """UDP-Lite sockets (protocol 136: CRIU's socket_udplite): bound, connected, with their checksum
    coverage (UDPLITE_SEND_CSCOV, UDPLITE_RECV_CSCOV), one over ::1 shut down, one not bound: after
    C/R (twice) the same names, peers, options and shutdowns; the pair still carries datagrams."""
    from tests.enginecase import grab_fd
    import socket
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136).close()
    except OSError as e:
        pytest.skip(f"this kernel makes no UDP-Lite socket: {e}")
    before, _, after = case.roundtrip(_in_netns(UDPLITE), iters=2)
    for n, what in ((10, r"inet udplite name=127\.0\.0\.1:7100 inq=0 .*udplite_recv_cscov:8,udplite_send_cscov:0"),
                    (11, r"inet udplite name=127\.0\.0\.1:7101 peer=127\.0\.0\.1:7100 inq=0 .*"
                         r"udplite_recv_cscov:0,udplite_send_cscov:12"),
                    (12, r"inet6 udplite name=::1:7102 inq=0 .* shutdown=1 "),
                    (13, r"inet udplite name=0\.0\.0\.0:0 ")):
        assert re.search(what, _fd(after, n)), _fd(after, n)
    with socket.socket(fileno=grab_fd(after.pid, 10)) as a, socket.socket(fileno=grab_fd(after.pid, 11)) as b:
        a.settimeout(10)
        b.settimeout(10)
        b.send(b"lite")
        assert a.recvfrom(100) == (b"lite", ("127.0.0.1", 7101))
        a.sendto(b"back", ("127.0.0.1", 7101))
        assert b.recv(100) == b"back"
