"""Network devices of the tree's namespaces come back (engine/netlinks.py, engine/netlinks_make.py): a
veth pair between two network namespaces of the tree with addresses and routes, a listener reached
through it after restore; a veth whose peer is outside the tree, refused before the stop unless
declared, made again with its outer end on a bridge of restore's own network namespace (one the
test makes: never the host's); the validator's rules for the record."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.enginecase import STOP_WATCH, CRError, case, py_hold, wait_until, was_stopped  # noqa: F401  (fixture)

# pid 1 (network namespace A) forks a child that unshares namespace B; A makes the veth pair v0/v1
# into B, addresses on both ends, a route in B; B listens on 10.1.0.2:7000 and fd00::2.
_PAIR = """
import ctypes, socket, subprocess
r, w = os.pipe(); r2, w2 = os.pipe()
child = os.fork()
if child == 0:
    ctypes.CDLL(None).unshare(0x40000000)
    os.write(w, b"x"); os.read(r2, 1)
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"v1")
    srv.bind(("10.1.0.2", 7000)); srv.listen(5)
    srv6 = socket.socket(socket.AF_INET6); srv6.bind(("fd00::2", 7000)); srv6.listen(5)
else:
    os.read(r, 1)
    def sh(c):
        subprocess.run(c, shell=True, check=True)
    sh(f"ip link add v0 type veth peer name v1 netns {child}; ip link set v0 address 02:00:00:00:00:01 mtu 1400; "
       "ip addr add 10.1.0.1/24 dev v0; ip -6 addr add fd00::1/64 dev v0 nodad; ip link set v0 up; ip link set lo up")
    sh(f"nsenter -t {child} -n sh -ec 'ip link set v1 mtu 1400; ip addr add 10.1.0.2/24 dev v1; "
       "ip -6 addr add fd00::2/64 dev v1 nodad; ip link set v1 up; ip route add 10.9.0.0/16 via 10.1.0.1 metric 7; "
       "ip route add blackhole 10.66.0.0/16 table 100'")
    # (settled before the snapshot: carrier on both ends, the kernel's link-local addresses past DAD)
    sh(f"for i in $(seq 200); do s=$(ip link; ip -6 addr show tentative; nsenter -t {child} -n sh -c "
       "'ip link; ip -6 addr show tentative'); case $s in *NO-CARRIER*|*tentative*) sleep 0.05;; *) break;; esac; done")
    os.write(w2, b"x")
"""


def _in_netns(body: str) -> str:
    hold = py_hold(body)
    assert hold.startswith("exec python3 -c ")
    return "exec unshare -n " + hold[len("exec "):]


# (in the tree's mount and pid namespaces: pid 1 is in A, its child in B)
_SHOW = ("for p in 1 $(cat /proc/1/task/1/children); do nsenter -t $p -n sh -c "
         "'ip -br link | sort; ip -br addr | sort; ip route show table all | grep -v \"proto kernel\" | sort; "
         "ss -ltnH | sort'; done")

_CONNECT = """
import socket, sys
for fam, host in ((socket.AF_INET, "10.1.0.2"), (socket.AF_INET6, "fd00::2")):
    s = socket.socket(fam); s.settimeout(10); s.connect((host, 7000)); s.close()
print("connected")
"""


def test_veth_pair_between_two_namespaces(case):
    """Both ends of a veth pair (each in a namespace of the tree) come back with their names, MAC
    address, MTU, addresses and routes (a gateway route, a blackhole one in table 100), and the
    listener in B (bound to v1: SO_BINDTODEVICE) is reached from A through the pair, over IPv4 and IPv6. Before, dump refused the
    namespaces ("interface v0, which a restored one (lo only) would lack")."""
    before, after = case.roundtrip(_in_netns(_PAIR), _SHOW)
    out = before.snap.check_output
    for want in ("v0@if", "02:00:00:00:00:01", "10.1.0.2%v1:7000", "10.1.0.1/24", "fd00::2/64", "10.9.0.0/16 via 10.1.0.1 dev v1 metric 7",
                 "blackhole 10.66.0.0/16 table 100"):
        assert want in out, out
    assert after.snap.check_output == out
    r = subprocess.run(["nsenter", "-t", str(after.pid), "-n", "python3", "-c", _CONNECT], capture_output=True,
                       text=True, timeout=30)
    assert r.stdout.strip() == "connected", r.stderr
    assert "mtu 1400" in subprocess.run(["nsenter", "-t", str(after.pid), "-n", "ip", "link", "show", "v0"],
                                        capture_output=True, text=True).stdout


def test_lo_address_kept(case):
    """An address added to lo (a service's anycast address) and an AnyIP route (`ip route add local
    10.0.0.0/8 dev lo`) come back; dump refused them before."""
    show = "nsenter -t 1 -n sh -c 'ip -br addr show lo; ip route show table local | grep -v \"proto kernel\"'"
    before, after = case.roundtrip(py_hold("").replace("exec python3 -c ", "exec unshare -n sh -c 'ip link set lo up; "
                                                       "ip addr add 10.9.8.7/32 dev lo; ip route add local 10.0.0.0/8 "
                                                       "dev lo; exec \"$0\" \"$@\"' python3 -c ", 1), show)
    assert "10.9.8.7/32" in before.snap.check_output, before.snap.check_output
    assert "local 10.0.0.0/8 dev lo" in before.snap.check_output, before.snap.check_output
    assert after.snap.check_output == before.snap.check_output


@pytest.fixture
def outer_netns():
    """A network namespace of the test's own (a sleeping holder, killed at the end): the outer side."""
    p = subprocess.Popen(["unshare", "-n", "sleep", "1000"], stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: os.stat(f"/proc/{p.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino,
                   "the holder's unshare -n")
        yield p.pid
    finally:
        p.kill()
        p.wait()


def _nsh(pid: int, script: str) -> str:
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", "sh", "-ec", script], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, f"{script!r}: {r.stderr}"
    return r.stdout


_LISTEN = """
import socket
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7001)); srv.listen(5)
"""


def test_external_veth_to_a_bridge(case, outer_netns):
    """A container's eth0 whose peer is on a bridge of an outer namespace (docker's, podman's, LXC's
    default network): refused before the stop unless declared; declared `veth[eth0]:k0` at dump and
    `veth[k0]:vo2@br0` at restore (run in the outer namespace), the outer end vo2 is made there on
    br0, up, and the restored listener answers from the outer namespace."""
    o = outer_netns
    pid = case.start(STOP_WATCH + _in_netns(_LISTEN))
    _nsh(o, f"ip link add br0 type bridge; ip addr add 10.2.0.1/24 dev br0; ip link set br0 up; "
            f"ip link add vo type veth peer name eth0 netns {pid}; ip link set vo master br0; ip link set vo up")
    _nsh(pid, "ip addr add 10.2.0.2/24 dev eth0; ip link set eth0 up; ip route add default via 10.2.0.1")
    with pytest.raises(CRError, match=r"interface eth0 is a veth whose peer is outside the tree: declare it with "
                                      r"--external veth\[eth0\]:KEY") as e:
        case.dump(pid, case.new_images_dir())
    assert len(str(e.value).strip().splitlines()) >= 1
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    with pytest.raises(CRError, match=r"--external veth\[eth9\]: no veth of that name"):
        case.dump(pid, case.new_images_dir(), ("--external", "veth[eth0]:k0", "--external", "veth[eth9]:k9"))
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    images = case.new_images_dir()
    case.dump(pid, images, ("--external", "veth[eth0]:k0"))
    with pytest.raises(CRError, match=r"the image needs externals: give --external veth\[k0\]:OUTER\[@BRIDGE\]"):
        case.restore(images, wrap=("nsenter", "-t", str(o), "-n"))
    assert "vo2" not in _nsh(o, "ip -br link")
    new = case.restore(images, ("--external", "veth[k0]:vo2@br0"), wrap=("nsenter", "-t", str(o), "-n"))
    link = _nsh(o, "ip -d link show vo2")
    assert "master br0" in link and ",UP" in link, link
    assert "10.2.0.2/24" in _nsh(new, "ip -br addr show eth0")
    assert "default via 10.2.0.1 dev eth0" in _nsh(new, "ip route")
    r = subprocess.run(["nsenter", "-t", str(o), "-n", "python3", "-c",
                        "import socket; s = socket.create_connection(('10.2.0.2', 7001), 10); print('connected')"],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "connected", r.stderr
    # (a second restore naming the same outer end: refused in one line, the first tree untouched)
    os.unlink(images + ".pid")
    with pytest.raises(CRError, match=r"interface eth0 \(a veth, its peer vo2\): File exists"):
        case.restore(images, ("--external", "veth[k0]:vo2@br0"), wrap=("nsenter", "-t", str(o), "-n"))
    assert "master br0" in _nsh(o, "ip -d link show vo2") and os.path.exists(f"/proc/{new}")


def _fail(msg):
    raise ValueError(msg)


_GOOD = {"links": [{"name": "v0", "kind": "veth", "index": 2, "mtu": 1500, "up": True, "mac": "02:00:00:00:00:01",
                    "peer": {"ns": "net-1", "name": "v1"}}],
         "addrs": [{"dev": "v0", "addr": "10.1.0.1", "prefix": 24, "scope": 0, "flags": 0}],
         "routes": [{"family": 4, "dst": "10.9.0.0", "dst_len": 16, "table": 254, "protocol": 3, "scope": 0,
                     "type": 1, "tos": 0, "flags": 0, "dev": "v0", "gateway": "10.1.0.2"}]}
_PEER = {"links": [{"name": "v1", "kind": "veth", "index": 2, "mtu": 1500, "up": True,
                    "peer": {"ns": "net-0", "name": "v0"}}]}


def _with(ns0=None, **link):
    rec = {**_GOOD, **(ns0 or {})}
    if link:
        rec = {**rec, "links": [{**rec["links"][0], **link}]}
    return {"net-0": rec, "net-1": _PEER}


@pytest.mark.parametrize("doc, pattern", [
    (_with(name="a/b"), r"no '/'"),
    (_with(name="x" * 16), r"1 to 15"),
    (_with(name="lo"), r"not lo"),
    (_with(kind="macvlan"), r"kind one of"),
    (_with(mac="zz"), r"mac aa:bb"),
    (_with(peer={"ns": "net-2", "name": "v1"}), r"peer must be a veth of a network namespace restore makes"),
    (_with(peer={"ns": "net-1", "name": "v9"}), r"peer must be a veth"),
    (_with(peer={"external": "a b"}), r"its peer is"),
    (_with(peer={"external": "k", "ns": "net-1"}), r"its peer is"),
    (_with(master="v0"), r"master must be a bridge"),
    (_with({"addrs": [{"dev": "eth9", "addr": "10.1.0.1", "prefix": 24, "scope": 0, "flags": 0}]}), r"on a link"),
    (_with({"addrs": [{"dev": "v0", "addr": "10.1.0.1", "prefix": 33, "scope": 0, "flags": 0}]}), r"out of range"),
    (_with({"addrs": [{"dev": "v0", "addr": "10.1.0.300", "prefix": 24, "scope": 0, "flags": 0}]}), r"on a link"),
    (_with({"routes": [{**_GOOD["routes"][0], "gateway": "fd00::1"}]}), r"out of range"),
    (_with({"routes": [{**_GOOD["routes"][0], "dev": "eth9"}]}), r"out of range"),
    (_with({"routes": [{**_GOOD["routes"][0], "type": 4}]}), r"out of range"),
    (_with({"links": [_GOOD["links"][0]] * 65}), r"at most 64 links"),
    ({"net-host": {"links": []}}, r"not a network namespace restore makes"),
])
def test_validator(doc, pattern):
    """Only namespaces restore makes; names of at most 15 bytes without '/'; a veth's peer inside
    the image naming it back, or an external key; addresses and routes well-formed, on the
    namespace's links; bounded counts."""
    from engine import netlinks
    made = {"net-0", "net-1"}
    netlinks.check(_with(), made, _fail)
    with pytest.raises(ValueError, match=pattern):
        netlinks.check(doc, made, _fail)


def test_validator_external_key_once():
    """Two veths of one external key would make two outer ends of one name: refused."""
    from engine import netlinks
    ext = {"name": "e0", "kind": "veth", "index": 3, "mtu": 1500, "up": True, "peer": {"external": "k0"}}
    doc = {"net-0": {"links": [ext]}, "net-1": {"links": [ext]}}
    netlinks.check({"net-0": doc["net-0"]}, {"net-0", "net-1"}, _fail)
    with pytest.raises(ValueError, match=r"external veth key is used twice"):
        netlinks.check(doc, {"net-0", "net-1"}, _fail)


def test_image_devices_only_in_namespaces_restore_makes():
    """The image check refuses devices for the host's network namespace (restore would make them in
    its own); the point of use refuses the restorer's own namespace too."""
    from engine import imageformat, netlinks, netlinks_make
    doc = {"processes": [{"ns": {"net": "net-0"}, "host_ns": ["net"]}], "netdevs": {"net-0": {"links": []}}}
    with pytest.raises(Exception, match=r"netdevs for 'net-0': not a network namespace restore makes"):
        imageformat._check_netvars(doc)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with pytest.raises(netlinks.NetlinkError, match=r"not one this restore made"):
            netlinks_make.make({"net-0": own}, {"net-0": {"links": []}}, {})
    finally:
        os.close(own)


# (in a setup's sh -c '...': wait until every link has carrier and no address is tentative: the
# snapshot must not see the kernel still settling)
_SETTLE = ("for i in $(seq 200); do s=$(ip link; ip -6 addr show tentative); case $s in *NO-CARRIER*|*tentative*) "
           "sleep 0.05;; *) break;; esac; done; ")


def test_veth_in_a_user_namespace(case):
    """A network namespace a user namespace owns (an unprivileged LXC container's, `unshare -Ur -n`)
    with a veth pair of its own, an address and a route: made again from restore's child joined to it."""
    setup = py_hold("").replace(
        "exec python3 -c ", "exec unshare -Ur -n sh -c 'ip link set lo up; ip link add v0 type veth peer name v1; "
        "ip addr add 10.5.0.1/24 dev v0; ip link set v1 up; ip link set v0 up; ip route add 10.6.0.0/16 via 10.5.0.2; "
        + _SETTLE + "exec \"$0\" \"$@\"' python3 -c ", 1)
    show = ("nsenter -t 1 -U -n --preserve-credentials sh -c \"ip -br link | awk '{print \\$1, \\$2}'; "
            "ip -4 -br addr; ip route | grep -v 'proto kernel'\"")
    before, after = case.roundtrip(setup, show)
    out = before.snap.check_output
    assert "10.5.0.1/24" in out and "10.6.0.0/16 via 10.5.0.2 dev v0" in out and "v1@v0" in out, out
    assert after.snap.check_output == out
