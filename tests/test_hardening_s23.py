"""Hostile images and hostile trees against session 22's surface: network devices with their
addresses and routes (manifest `netdevs`: engine/netlinks.py, netlinks_make.py), the packets restore
sends into a restored namespace (UDP datagrams and echo replies waiting: engine/fds/inet_raw.py,
inet_udp.py, inet_ping.py), raw and packet sockets, classic socket filters (engine/fds/inet_filter.py)
and the socket buffers the restorer forces (SO_*BUFFORCE).

The image is a real dump of a tree in a network namespace of its own (lo up, a veth pair, one end with an
address, a default route through it and a route of another table; a UDP socket with a filter and a
datagram waiting; a ping socket with an echo reply waiting; a raw socket; a packet socket bound to
the device by name; a unix listener whose socket file was renamed), changed the way an attacker with write access to the image directory would.
Each change is refused with exit status 2 and one line, nothing left running or mounted, nothing
of the host touched (test_hardening_hostile.refused), or restores with what the image says given to
the tree alone.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import enginecase
from enginecase import case, load_manifest  # noqa: F401  (fixture)
from test_hardening_hostile import _mutated, refused

_BODY = """
import ctypes, socket, struct, time
def attach(s, insns):
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(code)))
def wait(s):
    for _ in range(1000):
        if struct.unpack_from("=I", s.getsockopt(socket.SOL_SOCKET, 55, 36))[0]:
            return
        time.sleep(0.01)
    raise SystemExit("setup: nothing arrived")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 5000))
attach(u, [(0x06, 0, 0, 0xffff)])
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(("127.0.0.1", 5001)); c.sendto(b"hello", ("127.0.0.1", 5000))
wait(u); os.dup2(u.fileno(), 10)
p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); p.bind(("127.0.0.1", 4242))
p.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"ping", ("127.0.0.1", 0)); wait(p); os.dup2(p.fileno(), 11)
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253); os.dup2(r.fileno(), 12)
k = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5)); k.bind(("d0", 0x88b5))
os.dup2(k.fileno(), 13)
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.setsockopt(socket.SOL_SOCKET, 62, socket.if_nametoindex("d0"))
os.dup2(b.fileno(), 14)
l = socket.socket(socket.AF_UNIX); l.bind("/run/.s23.tmp"); os.rename("/run/.s23.tmp", "/run/s23.sock"); l.listen(4)
os.dup2(l.fileno(), 15)   # (bound under a temporary name: its record says where its file is, `bound`)
for s in (u, c, p, r, k, b, l): s.close()
"""
# (every link with carrier, no address tentative: the dump must not see the kernel settling)
_SETTLE = ("for i in $(seq 400); do s=$(ip link; ip -6 addr show tentative); case $s in *NO-CARRIER*|*tentative*) "
           "sleep 0.05;; *) break;; esac; done; case $(ip link; ip -6 addr show tentative) in *NO-CARRIER*|*tentative*) "
           "echo setup: the links did not settle >&2; exit 1;; esac; ")
_NET = ("ip link set lo up; echo \"0 2147483647\" > /proc/sys/net/ipv4/ping_group_range; "
        "ip link add d0 type veth peer name d1; ip addr add 10.2.0.2/24 dev d0; ip link set d1 up; ip link set d0 up; "
        "ip route add default via 10.2.0.1; ip route add blackhole 10.66.0.0/16 table 100; " + _SETTLE)
SETUP = "exec unshare -n sh -ec '" + _NET.replace("'", "'\\''") + "exec \"$0\" \"$@\"' " + \
    enginecase.py_hold(_BODY)[len("exec "):]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The dumped tree of SETUP."""
    if subprocess.run(["sh", "-c", "command -v ip"], capture_output=True).returncode:
        pytest.skip("ip (iproute2) is not installed: the tree makes its devices with it")
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _hold(d) -> dict:
    """The holding process (the one with the sockets)."""
    return next(p for p in d["processes"] if any(f.get("kind") == "packet" for f in p["fds"]))


def _fd(d, n: int) -> dict:
    return next(f for f in _hold(d)["fds"] if f["fd"] == n)


def _net(d) -> str:
    return _hold(d)["ns"]["net"]


def _link(d, name: str) -> dict:
    return next(lk for lk in d["netdevs"][_net(d)]["links"] if lk["name"] == name)


def test_image_has_what_the_tests_change(image_dir):
    d = load_manifest(image_dir)
    net = d["netdevs"][_net(d)]
    assert sorted((lk["name"], lk["kind"]) for lk in net["links"]) == [("d0", "veth"), ("d1", "veth")], net
    assert "10.2.0.2" in [a["addr"] for a in net["addrs"]], net
    assert sorted(r["table"] for r in net["routes"]) == [100, 254], net
    assert [x["data"] for x in _fd(d, 10)["dgrams"]] == ["aGVsbG8="] and _fd(d, 10)["filter"], _fd(d, 10)
    assert len(_fd(d, 11)["replies"]) == 1, _fd(d, 11)
    assert _fd(d, 12)["proto"] == "raw" and _fd(d, 13)["dev"] == "d0", (_fd(d, 12), _fd(d, 13))
    assert _fd(d, 14)["opts"]["bindtoifindex"] == _link(d, "d0")["index"], _fd(d, 14)


# --- packets restore sends into a restored namespace ----------------------------------------------

@pytest.fixture
def outer_netns():
    """A network namespace of the test's own (a sleeping holder, killed at the end), the side where
    an external veth's outer end is made: a bridge br0 with 10.2.0.1/24 there (IPv6 off and a MAC
    address of its own: else a link-local address would come when a port joins, and its MAC address
    would be the port's, changes of the fuzzers' outer state)."""
    p = subprocess.Popen(["unshare", "-n", "sh", "-ec", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                          "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; "
                          "ip link add br0 address 02:00:00:00:00:b0 type bridge; ip addr add 10.2.0.1/24 dev br0; "
                          "ip link set br0 up; touch /tmp/.mntcr-s23-outer-$$; exec sleep 1000"],
                         stdin=subprocess.DEVNULL)
    mark = f"/tmp/.mntcr-s23-outer-{p.pid}"
    try:
        import time
        deadline = time.monotonic() + 30
        while not os.path.exists(mark) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if not os.path.exists(mark):
            raise enginecase.SetupError("the outer network namespace with br0 was not made")
        yield p.pid
    finally:
        p.kill()
        p.wait()
        if os.path.exists(mark):
            os.unlink(mark)


def _external_d0(d) -> None:
    """The veth pair d0/d1 made a veth d0 whose peer is outside the tree (`--external veth[d0]:k0`)."""
    rec = d["netdevs"][_net(d)]
    rec["links"] = [{**lk, "peer": {"external": "k0"}} for lk in rec["links"] if lk["name"] == "d0"]
    rec["addrs"] = [a for a in rec["addrs"] if a["dev"] != "d1"]
    rec["routes"] = [r for r in rec["routes"] if r.get("dev") != "d1"]


def _sniff_in(pid: int) -> socket.socket:
    """A packet socket (every protocol) of the network namespace of `pid`, bound to its br0: made by
    a thread of ours that joins that namespace (a thread's network namespace is its own) and ends."""
    import threading
    from engine import kernel
    got = []

    def make():
        ns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            kernel.setns(ns, kernel.CLONE_NEWNET)
        finally:
            os.close(ns)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.bind(("br0", 3))
        got.append(s)
    t = threading.Thread(target=make)
    t.start()
    t.join()
    if not got:
        raise enginecase.SetupError("no packet socket on the outer br0")
    return got[0]


def _outer_links(outer: int) -> str:
    return subprocess.run(["nsenter", "-t", str(outer), "-n", "ip", "-br", "link"], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def _restore_in(outer: int, img: str, tmp_path) -> subprocess.CompletedProcess:
    """Restore `img` run in the network namespace of `outer`, its external veth k0's outer end vo9
    on br0 there; a tree that ran is killed. Then wait (at most 30 s) until vo9 is gone (the pair
    goes with the restored namespace, which the kernel frees later)."""
    pidfile = os.path.join(str(tmp_path), "pid")
    r = enginecase.mntcr("restore", "-D", img, *enginecase.RESTORE_EXTERNALS, "--external", "veth[k0]:vo9@br0",
                         "--pidfile", pidfile, wrap=("nsenter", "-t", str(outer), "-n"), timeout=90)
    if r.returncode == 0:
        from zdtm.snapshot import kill_tree
        with open(pidfile) as f:
            kill_tree(int(f.read()))
        os.unlink(pidfile)
    import time
    deadline = time.monotonic() + 30
    while "vo9" in _outer_links(outer):
        assert time.monotonic() < deadline, f"the outer end vo9 is left: {_outer_links(outer)}"
        time.sleep(0.05)
    return r


@pytest.mark.parametrize("fd, key", [(10, "udp"), (11, "ping")])
def test_waiting_packets_never_leave_the_namespace(image_dir, tmp_path, outer_netns, fd, key):
    """A UDP socket with a datagram waiting (or a ping socket with an echo reply), its address
    changed to one off the namespace (10.2.0.1, the bridge's beyond its external veth, bound with
    IP_FREEBIND), restored where the user gives that veth's outer end on br0: restore sends what
    waited only to an address of the namespace and on its lo alone, never through a device out of
    it, and refuses the image in one line naming the socket. Before, restore succeeded, having
    sent a packet from 127.0.0.1 to 10.2.0.1 out of the namespace through the veth (its TX count),
    onto the host's bridge."""
    def mutate(d):
        _external_d0(d)
        e = _fd(d, fd)
        e["addr"] = "10.2.0.1"
        e["opts"]["freebind"] = 1
    img = _mutated(image_dir, tmp_path, mutate)
    sniff = _sniff_in(outer_netns)
    r = _restore_in(outer_netns, img, tmp_path)
    sniff.setblocking(False)
    seen = []
    while True:
        try:
            frame = sniff.recv(2048)
        except BlockingIOError:
            break
        if frame[12:14] == b"\x08\x00" and frame[26:30] == socket.inet_aton("127.0.0.1"):
            seen.append(frame)
    sniff.close()
    assert not seen, f"restore sent {len(seen)} packets from 127.0.0.1 onto the outer bridge: {r.stderr}"
    assert r.returncode == 2 and re.fullmatch(
        rf"mntcr restore: the [\w ]+ waiting on {key} port \d+: 10\.2\.0\.1 is not an address of its network "
        r"namespace .*\n", r.stderr), r.stderr


# --- socket buffers the restorer forces -----------------------------------------------------------

def _try(image_dir, tmp_path, mutate) -> tuple[int, str]:
    """Restore the image changed by `mutate`: (exit status, stderr), the tree killed when it ran."""
    from test_hardening_images import restore_outcome
    img = _mutated(image_dir, tmp_path, mutate)
    return restore_outcome(img, list(enginecase.RESTORE_EXTERNALS), str(tmp_path))


@pytest.mark.parametrize("fd", [10, 11])
def test_a_receive_buffer_at_the_kernels_most_is_restored(image_dir, tmp_path, fd):
    """A receive buffer of 2^31 - 2 bytes (the most SO_RCVBUFFORCE gives) on a socket with packets
    waiting: restore widens it for them, at most to what setsockopt takes, and gives it back its
    size. Before, the widened size overflowed setsockopt's int: "restore failed: TypeError"."""
    def mutate(d):
        _fd(d, fd)["opts"]["rcvbuf"] = (1 << 31) - 2
    assert _try(image_dir, tmp_path, mutate) == (0, "")


# --- network devices ------------------------------------------------------------------------------

def _rename(d, old: str, new: str) -> None:
    """Link `old` of the tree's namespace renamed `new`, with its peer's name of it, its addresses and
    routes."""
    rec = d["netdevs"][_net(d)]
    for lk in rec["links"]:
        if lk["name"] == old:
            lk["name"] = new
        if (lk.get("peer") or {}).get("name") == old:
            lk["peer"]["name"] = new
    for x in rec["addrs"] + rec["routes"]:
        if x.get("dev") == old:
            x["dev"] = new


@pytest.mark.parametrize("name", ["..", ".", "a:b", "all", "default"])
def test_a_device_name_the_kernel_refuses_is_refused_by_the_validator(image_dir, tmp_path, name):
    """A link named as the kernel names no device (dev_valid_name: not . or .., no ':'; nor all or
    default, /proc/sys/net/*/conf's own entries): refused by the image check, naming the rule, not
    by RTM_NEWLINK's bare "Invalid argument" once restore made its namespaces."""
    refused(_mutated(image_dir, tmp_path, lambda d: _rename(d, "d1", name)),
            r"netdevs net-\d+: link name .*not lo, \., \.\., all or default", tmp_path)


def test_an_ifindex_a_device_of_the_namespace_has_is_given_another(image_dir, tmp_path):
    """A link at ifindex 1 (lo's, a device every fresh namespace has: so are a tunnel's fallback
    devices on a host whose kernel has its module, which the dumper's may not have had): made at
    another index, as for one taken by its peer's namespace; never lo changed (RTM_NEWLINK at an
    index with NLM_F_EXCL). Before, the restore failed "File exists"."""
    def mutate(d):
        _link(d, "d0")["index"] = 1
    assert _try(image_dir, tmp_path, mutate) == (0, "")


# --- fuzz: session 22's fields mutated at random --------------------------------------------------

_EXAMPLES = int(os.environ.get("MNTCR_S23_EXAMPLES") or 0)


def _surface(doc) -> list[tuple]:
    """The places of session 22's fields in the image: the network devices, addresses and routes
    (netdevs) and the holder's sockets' addresses, options, filters, devices and what waits on them."""
    from test_hardening_images import _nodes
    roots = [("netdevs",)] if isinstance(doc.get("netdevs"), dict) else []
    for i, p in enumerate(doc.get("processes") if isinstance(doc.get("processes"), list) else ()):
        for j, f in enumerate(p.get("fds") if isinstance(p, dict) and isinstance(p.get("fds"), list) else ()):
            if isinstance(f, dict) and f.get("kind") in ("inet", "packet"):
                roots += [("processes", i, "fds", j, k) for k in ("filter", "dgrams", "replies", "opts", "popts", "dev",
                                                               "protocol", "addr", "port", "type", "proto") if k in f]
    out = []
    for root in roots:
        out += [root + path for path, _ in _nodes(enginecase.at(doc, root))]
    return out


def _outer_state(outer: int) -> str:
    """What restore must leave as it is in the restorer's network namespace (the outer one, ours
    alone): its links, addresses, routes of every table, sysctls of its devices (not `ip -d`: a
    bridge's timers move; not the neighbours, a cache)."""
    text = subprocess.run(["nsenter", "-t", str(outer), "-n", "sh", "-c",
                           "ip link; ip addr; ip route show table all; ip -6 route show table all; "
                           "grep -r . /proc/sys/net/ipv4/conf /proc/sys/net/ipv6/conf 2>/dev/null | sort"],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    # (br0's carrier comes and goes with the port the user asked for, told late by the link watch)
    return re.sub(r"NO-CARRIER,|,LOWER_UP| state \w+| linkdown", "", text)


def _fuzz_outcome(image_dir: str, outer: int, edit) -> None:
    """Restore a copy of the image (its veth pair made an external veth, `edit`ed) in namespace
    `outer`: refused in one line (exit 2, no traceback, no pid file) or restored (the tree then
    killed); never a leak, the image unchanged, nothing of the outer namespace changed."""
    from zdtm import leakguard
    with tempfile.TemporaryDirectory(prefix="mntcr-s23-") as tmp:
        work = enginecase.copy_image(image_dir, tmp)
        doc = load_manifest(work)
        _external_d0(doc)
        edit(doc)
        try:
            enginecase.save_manifest(work, doc)
        except (ValueError, UnicodeEncodeError):
            return   # (not representable as JSON)
        digest = enginecase.tree_hash(work)
        guard = leakguard.Guard()
        before = _outer_state(outer)
        r = _restore_in(outer, work, tmp)
        lines = r.stderr.strip().splitlines()
        event("restored" if r.returncode == 0 else "refused: " + re.sub(r"\d+", "N", r.stderr.split(":")[1].strip())[:40])
        assert r.returncode in (0, 2), r.stderr
        assert r.returncode == 0 or (len(lines) == 1 and lines[0].startswith("mntcr restore: ")
                                     and "Traceback" not in r.stderr and "restore failed: " not in r.stderr), r.stderr
        assert not os.path.exists(os.path.join(tmp, "pid")), "a refused restore wrote its pid file"
        leaked = guard.own_leaks(work, tmp)
        assert not leaked, leakguard.describe(leaked)
        assert enginecase.tree_hash(work) == digest, "restore changed the image directory"
        after = _outer_state(outer)
        if after != before:
            import difflib
            raise AssertionError("the restorer's network namespace changed:\n" + "\n".join(
                difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)))


def _mutations():
    from test_hardening_s19 import _MUTATIONS
    return _MUTATIONS


@settings(max_examples=_EXAMPLES or 6, deadline=None, derandomize=True, database=None, phases=(Phase.generate,),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(muts=_mutations())
def test_fuzz_session_22_fields(image_dir, outer_netns, muts):
    """Random changes (hostile values, deletions, duplicates) of session 22's fields, restored where
    the user gives the external veth: one line or a restore, never a leak nor a change of the
    restorer's network namespace. Derandomized: the same examples each run;
    not shrunk (a failure names its example: each restore takes seconds)."""
    _fuzz_outcome(image_dir, outer_netns, lambda doc: enginecase.mutate(doc, muts, _surface))


_TEXTS = ["lo", "d0", "vo9", "br0", "..", "all", "10.2.0.1", "127.0.0.1", "::1", "0.0.0.0", "255.255.255.255",
          "224.0.0.1", "fe80::1", "ff02::1", "veth", "bridge", "dummy", "k0", "AAAA", "CAAAAAAAAAA="]


@settings(max_examples=_EXAMPLES or 6, deadline=None, derandomize=True, database=None, phases=(Phase.generate,),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(-(1 << 33), 1 << 33), st.sampled_from(_TEXTS),
                                  st.booleans()), min_size=1, max_size=4))
def test_fuzz_session_22_values_in_range(image_dir, outer_netns, changes):
    """As above with values of the field's own type (near its old one, or any; a device name, an
    address), so that more images pass the validator and reach what restore makes of them: links,
    indexes, addresses, routes and tables, socket addresses, options, filters, packets."""
    def edit(doc):
        enginecase.mutate_in_range(doc, changes, _surface, enginecase.near_or_text)
    _fuzz_outcome(image_dir, outer_netns, edit)


# --- hostile trees: what dump reads changing while it reads ----------------------------------------

_PAIR = ("ip link set lo up; ip link add d0 type veth peer name d1; ip link set d0 up; ip link set d1 up; " + _SETTLE)
# Frames of a local ethertype sent on d1 without end (they arrive on d0, where a packet socket
# takes them), a second thread reading them now and then.
_PACKET_FLOOD = """
import socket, threading, time
k = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5)); k.bind(("d0", 0x88b5)); os.dup2(k.fileno(), 10)
o = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); os.dup2(o.fileno(), 11)
def flood():
    while True:
        o.sendto(b"\\xff" * 6 + b"\\x02" * 6 + b"\\x88\\xb5" + b"flood" * 10, ("d1", 0x88b5))
def drain():
    while True:
        k.recv(2048)
threading.Thread(target=flood, daemon=True).start()
threading.Thread(target=drain, daemon=True).start()
"""
# Datagrams of protocol 253 sent to 127.0.0.1 without end, which a raw socket of that protocol takes,
# a second thread reading them.
_RAW_FLOOD = """
import socket, threading
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253); os.dup2(r.fileno(), 10)
def flood():
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 253) as o:
        while True:
            o.sendto(b"flood", ("127.0.0.1", 0))
def drain():
    while True:
        r.recv(2048)
threading.Thread(target=flood, daemon=True).start()
threading.Thread(target=drain, daemon=True).start()
"""
# d1 brought down and up, its IPv4 address set and cleared, without end (SIOCSIFFLAGS, SIOCSIFADDR).
_LINK_CHURN = """
import fcntl, random, socket, struct, threading
def churn():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while True:
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"d1", 0x1 | 0x2 | 0x1000 if random.random() < 0.5 else 0x2 | 0x1000))
        addr = socket.inet_aton("10.3.0.1" if random.random() < 0.5 else "0.0.0.0")
        fcntl.ioctl(s, 0x8916, struct.pack("16sHH4s8x", b"d1", socket.AF_INET, 0, addr))
threading.Thread(target=churn, daemon=True).start()
"""


@pytest.mark.parametrize("body", [_PACKET_FLOOD, _RAW_FLOOD, _LINK_CHURN], ids=["packet-flood", "raw-flood", "link-churn"])
def test_a_tree_changing_its_network_while_dumped_is_dumped_whole_or_refused_running(case, body):
    """A packet socket on a veth flooded with frames, a raw socket with datagrams, a veth brought
    down and up with its address set and cleared, all the time, by threads of the tree: each of
    three dumps either succeeds and the image restores, or is refused in one line with the tree
    running on (resumed if it was stopped) - never a hang, never an image restore refuses."""
    from test_hardening_s22 import dumped_whole_or_refused_running
    hold = enginecase.py_hold(body)
    pid = case.start("exec unshare -n sh -ec '" + _PAIR + "exec \"$0\" \"$@\"' " + hold[len("exec "):])
    dumped_whole_or_refused_running(case, pid)


# --- left from session 22: a pty of the host's devpts ----------------------------------------------

_HOST_PTY = enginecase.py_hold("""
m = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)   # (a master of the host's devpts, bound in)
os.dup2(m, 10); os.close(m)
""")


def _free_host_ptys() -> int:
    """How many more ptys the host's devpts hands out (pty.max less those in use)."""
    with open("/proc/sys/kernel/pty/max") as f, open("/proc/sys/kernel/pty/nr") as g:
        return int(f.read()) - int(g.read())


def test_a_pty_of_the_hosts_devpts_far_up_is_refused(case, tmp_path):
    """A master of the tree on the host's devpts (an external mount), its number in the image moved
    up past 100 free ones: restore, which opens masters until the kernel hands out that number,
    holds at most pty.HOST_MOST of the host's ptys (its users' terminals) and refuses in one line.
    Before, it held every free number below it (up to 4096: the host's pty.max) until every
    process had its fds, and restored."""
    from engine.fds import pty
    if _free_host_ptys() < 400:
        pytest.skip("fewer than 400 free ptys on this host")
    pid = case.start(_HOST_PTY, binds=(("/dev/pts", "/dev/pts"),))
    images = case.new_images_dir()
    case.dump(pid, images, ("--external", "mnt[/dev/pts]:pts"))
    d = load_manifest(images)
    obj = next(k for k, o in d["objects"].items() if o["kind"] == "pty")
    index = d["objects"][obj]["index"]
    used = set(int(n) for n in os.listdir("/dev/pts") if n.isdigit())
    # (a number past HOST_MOST + 100 free ones from the lowest free: whatever the host opens meanwhile)
    free = [n for n in range(4096) if n not in used and n != index]
    d["objects"][obj]["index"] = free[pty.HOST_MOST + 100]
    enginecase.save_manifest(images, d)
    refused(images, rf"pty {free[pty.HOST_MOST + 100]} of an external devpts \(the host's\): more than "
                    rf"{pty.HOST_MOST} of its free numbers lie below it", tmp_path,
            extra=("--external", "mnt[pts]:/dev/pts"))


def test_a_pty_of_the_hosts_devpts_near_is_restored(case):
    """Control: the same tree restores (its number, free again once it is dumped, within reach)."""
    pid = case.start(_HOST_PTY, binds=(("/dev/pts", "/dev/pts"),))
    new = case.cr(pid, ("--external", "mnt[/dev/pts]:pts"), ("--external", "mnt[pts]:/dev/pts"))
    from zdtm.snapshot import tree_pids
    holder = next(p for p in [new] + tree_pids(new) if os.path.exists(f"/proc/{p}/fd/10"))
    assert os.readlink(f"/proc/{holder}/fd/10") == "/dev/pts/ptmx", os.readlink(f"/proc/{holder}/fd/10")



# --- left from session 22: the check of a live socket of the host ----------------------------------

def _on_external(base: str):
    """The unix listener's socket file named `base` in the directory of the /etc external mount
    (given at restore as a directory of the test's), bound under its temporary name."""
    def mutate(d):
        etc = next(m for ns in d["mntns"].values() for m in ns["mounts"] if m.get("external") == "etc")
        e = _fd(d, 15)
        etc["mount_opts"] = [o for o in etc["mount_opts"] if o != "ro"]   # (the user's directory, writable)
        e["bound"] = {"mnt": etc["id"], "path": "/" + base}
        e["path"] = "/etc/.s23.tmp"
    return mutate


@pytest.mark.parametrize("listening", [False, True])
def test_a_host_socket_is_neither_connected_to_nor_taken_over(image_dir, tmp_path, listening):
    """A listener whose socket file is named as a socket of the host's in an external directory: one
    bound but not listening yet (a daemon between its bind and its listen), or a listener. Restore
    asks whether a socket is bound there without connecting to it (a datagram connect: EPROTOTYPE)
    and refuses in one line; the host's socket keeps its file and finds no connection queued. Before,
    restore connected to it (a stream connect): the host's listener found a connection of restore's
    in its queue, and one not listening yet answered ECONNREFUSED as a stale node does, so restore
    unlinked the host's socket file and bound the tree's listener in its place."""
    from test_hardening_s22 import _restore_with_etc
    etc = tmp_path / "etc"
    etc.mkdir()
    host = socket.socket(socket.AF_UNIX)
    host.bind(str(etc / "daemon.sock"))
    ino = os.stat(etc / "daemon.sock").st_ino
    if listening:
        host.listen(1)
    try:
        code, err = _restore_with_etc(_mutated(image_dir, tmp_path, _on_external("daemon.sock")), str(etc), tmp_path)
        assert os.stat(etc / "daemon.sock").st_ino == ino, f"the host's socket file was replaced: {err}"
        if listening:
            host.setblocking(False)
            with pytest.raises(BlockingIOError):
                host.accept()[0].close()
        assert code == 2 and re.search(r"daemon.sock.*a live socket", err), err
    finally:
        host.close()


# --- the dumper's /proc beneath the tree's, made by the restorer of its own pid namespace -----------

_MOUNT_PROC = ("exec unshare --pid --fork --mount-proc --propagation private sh -c "
               "'exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")


@pytest.fixture(scope="module")
def covered_proc_image(tmp_path_factory):
    """An image of `unshare --pid --fork --mount-proc` run in the dumper's pid namespace: the dumper's
    /proc lies beneath the tree's (engine/restore.py `_HERE` makes it of the restorer's own)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (dumps a real container)")
    c = enginecase.EngineCase(tmp_path_factory.mktemp("here"))
    try:
        kid = enginecase.in_own_pidns(c.start(_MOUNT_PROC, host_pidns=True, daemons=("unshare",)))
        images = c.new_images_dir()
        r = enginecase.mntcr("dump", "-t", str(kid), "-D", images, *enginecase.DUMP_EXTERNALS)
        if r.returncode:
            raise enginecase.SetupError(r.stderr)
        yield images
    finally:
        c.close()


def _covered_proc(d) -> dict:
    """The mount of the proc of the dumper's pid namespace (covered by the tree's /proc)."""
    host = next(n for n, rec in d["pidns"].items() if rec.get("host"))
    sid = next(s for s, sb in d["superblocks"].items() if sb.get("pidns") == host)
    return next(m for ns in d["mntns"].values() for m in ns["mounts"] if m["sb"] == sid)


@pytest.mark.parametrize("where, path", [("fd", "/1/status"), ("fd", "/1/net/unix"), ("fd", "/1/mem"), ("cwd", "/1"),
                                         ("root", "/1/root"), ("watch", "/1")])
def test_nothing_of_the_tree_lies_on_the_restorers_proc(covered_proc_image, tmp_path, where, path):
    """An fd on a file of pid 1 (its status, its network namespace's unix sockets, its memory), a
    cwd or root in it, an inotify watch on it, on the covered proc mount that restore makes of its
    own pid namespace (pid 1 the host's init when it runs in the host's): the tree would hold the
    restorer's pid 1's files, opened by restore as root. Refused by the image check. Before, the
    tree got /1/status and /1/net/unix, its cwd /1 (its memory and root: "Permission denied" as the
    open is made, not a rule)."""
    def mutate(d):
        p = d["processes"][0]
        loc = {"mnt": _covered_proc(d)["id"], "path": path}
        if where == "fd":
            p["fds"].append({"fd": 20, "flags": 2 if path.endswith("mem") else 0, "pos": 0, **loc})
        elif where == "watch":
            p["fds"].append({"fd": 20, "flags": 0, "pos": 0, "kind": "inotify",
                             "watches": [{"wd": 1, "mask": 0x100, **loc}]})
        else:
            p[where] = loc
    refused(_mutated(covered_proc_image, tmp_path, mutate),
            r"bad image: .*a file on mount \d+ of superblock sb-\d+ \(a proc of the restorer's own pid namespace", tmp_path)


def test_the_covered_proc_image_restores(covered_proc_image, tmp_path):
    """Control: the image restores unchanged (the refusals above are the changes')."""
    assert _try(covered_proc_image, tmp_path, lambda d: None) == (0, "")
