"""Hostile images against session 19's surface: TCP connections in repair mode, a listener's
waiting connections, waiting UDP datagrams (engine/fds/inet_tcp.py, inet_pending.py, inet_udp.py,
inet_raw.py), seccomp filters (engine/seccomp.py), time namespace offsets (engine/timens.py),
scheduling attributes (engine/schedattrs.py), the audit login uid (engine/loginuid.py) and ipc
namespace sysctls (engine/ipcvars.py).

The image is a real dump of a tree in its own network and ipc namespaces (a TCP connection with
bytes queued both ways, a client waiting in a listener's queue with bytes sent, a datagram waiting
on a UDP socket, a raised msgmax), changed the way an attacker with write access to the image
directory would. Each is refused with exit status 2 and one line, nothing left running or mounted,
nothing of the host touched (test_hardening_hostile.refused), or fails validation in one line.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import enginecase
from engine import image, imageformat
from enginecase import case, load_manifest  # noqa: F401  (fixture)
from test_hardening_hostile import _mutated, refused
from test_hardening_images import restore_outcome
from test_hardening_s19 import _MUTATIONS

_BODY = """
import socket
open("/proc/sys/kernel/msgmax", "w").write("16000")
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", PORT)); l.listen(8)
c = socket.socket(); c.connect(("127.0.0.1", PORT)); a, _ = l.accept()
c.sendall(b"to-server"); a.sendall(b"to-client")
w = socket.socket(); w.connect(("127.0.0.1", PORT)); w.sendall(b"waiting")
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("127.0.0.1", UDP))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", UDP + 1)); s.sendto(b"one", ("127.0.0.1", UDP))
for n, x in ((10, l), (11, c), (12, a), (13, w), (14, r), (15, s)):
    os.dup2(x.fileno(), n); x.close()
"""
# (ports a host socket of the tests may hold: what reaches it came from the restore into the host's namespace)
PORT, UDP = 47000, 45353
_HOLD = enginecase.py_hold(_BODY.replace("PORT", str(PORT)).replace("UDP", str(UDP)))
SETUP = "exec unshare -n -i sh -c 'ip link set lo up; exec \"$0\" \"$@\"' " + _HOLD[len("exec "):]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The dumped tree of SETUP."""
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _fds(doc, key: str) -> list[dict]:
    """The inet fd entries of the image holding `key` ("tcp", "pending", "dgrams", "listen")."""
    return [f for p in doc["processes"] for f in p["fds"] if f.get("kind") == "inet" and key in f]


def _invalid(img: str, mutate, pattern: str) -> None:
    """The manifest of `img` changed by `mutate` fails validation in one line matching `pattern`."""
    doc = load_manifest(img)
    imageformat.validate(json.loads(json.dumps(doc)))
    mutate(doc)
    with pytest.raises(image.ImageError) as e:
        imageformat.validate(doc)
    assert "\n" not in str(e.value) and re.search(pattern, str(e.value)), e.value


def test_image_has_what_the_tests_change(image_dir):
    """The dump holds every object the tests below change (else they would pass for nothing)."""
    doc = load_manifest(image_dir)
    assert [len(_fds(doc, k)) for k in ("tcp", "pending", "dgrams")] == [2, 1, 1], doc["processes"][0]["fds"]
    assert next(iter(doc["sysvipc"].values()))["vars"] == {"kernel/msgmax": 16000}


# --- seccomp filters (engine/seccomp.py) ----------------------------------------------------

# Classic BPF programs (struct sock_filter: code, jt, jf, k), as an image holds them.
_RET_ERRNO_ALL = "0600000001000500"   # RET ERRNO(EPERM): every system call fails
_RET_KILL_ALL = "0600000000000000"    # RET KILL_THREAD: the first system call kills
_RET_ALLOW = "060000000000ff7f"       # RET ALLOW


def _filters(doc, insns: str, late: bool) -> None:
    """The tree's process gets one filter `insns`, installed as its last step (`late`: with
    no_new_privs) or before its ids and its detach (engine/seccomp.py `late`)."""
    p = doc["processes"][0]
    p["seccomp"] = [{"insns": insns, "log": False}]
    p["no_new_privs"] = late
    if not late:
        p["caps"]["eff"] &= ~(1 << 21)   # (no CAP_SYS_ADMIN kept: installed early)


@pytest.mark.parametrize("late", [False, True], ids=["early", "late"])
def test_filter_that_denies_every_call_fails_in_one_line(image_dir, tmp_path, late):
    """A filter that makes every system call fail (EPERM). Installed before its detach, the stand-in
    could not answer and died (glibc's _exit ends in an instruction that faults): "restore failed:
    ChannelClosed: peer closed the channel", naming nothing; now it names the process. Installed
    last, the root's last word never comes and its pause() fails at once: the restore waited 60 s
    for the word, then 60 s more for the spinning stand-in to let go of the lifeline; it kills the
    tree after the first 60 s now."""
    refused(_mutated(image_dir, tmp_path, lambda d: _filters(d, _RET_ERRNO_ALL, late)),
            r"process \d+: (it ended before it answered its detach|it did not tell how its last steps went)",
            tmp_path, timeout=100)


def test_filter_that_fakes_the_answer_fails_within_a_bound(image_dir, tmp_path):
    """A filter under which sendmsg(2) returns 0 (SECCOMP_RET_ERRNO with errno 0: "sent", nothing
    sent): the stand-in's detach answer never came and it waited for the next request, as the
    restore waited for the answer, forever. A wait for a stand-in that runs under its filters is
    bounded now: refused in one line, nothing left."""
    nr = {"x86_64": 46, "aarch64": 211}[os.uname().machine]   # (sendmsg)
    fake = (struct.pack("=HBBI", 0x20, 0, 0, 0) + struct.pack("=HBBI", 0x15, 0, 1, nr)
            + struct.pack("=HBBI", 0x06, 0, 0, 0x50000)).hex() + _RET_ALLOW
    refused(_mutated(image_dir, tmp_path, lambda d: _filters(d, fake, False)), r"process \d+: no answer in 60 s",
            tmp_path, timeout=100)


def test_filter_that_denies_every_call_before_the_ids_fails_in_one_line(image_dir, tmp_path):
    """The same filter on a process with ids to take: its stand-in installs it before them, and died
    before it answered: "restore failed: ChannelClosed: peer closed the channel", naming nothing.
    Names the process now."""
    def mutate(d):
        _filters(d, _RET_ERRNO_ALL, False)
        d["processes"][0]["creds"] = {"uid": [0, 0, 0, 0], "gid": [0, 0, 0, 0], "groups": []}
    refused(_mutated(image_dir, tmp_path, mutate), r"process \d+: it ended before it took its ids", tmp_path)


@pytest.mark.parametrize("insns, pattern", [
    ("ffffffffffffffff", r"instruction 0: opcode 0xffff is none"),
    ("9400000001000000" + _RET_ALLOW, r"instruction 0: opcode 0x94 is none"),   # (BPF_MOD: not for seccomp)
    ("0500000010000000" + _RET_ALLOW, r"instruction 0: a jump past the end"),
    ("1500000200000000" + _RET_ALLOW * 2, r"instruction 0: a jump past the end"),
    ("2000000040000000" + _RET_ALLOW, r"instruction 0: a load at offset 64"),
    ("2000000002000000" + _RET_ALLOW, r"instruction 0: a load at offset 2"),
    ("3400000000000000" + _RET_ALLOW, r"instruction 0: a division by 0"),
    ("6400000020000000" + _RET_ALLOW, r"instruction 0: a shift by 32"),
    ("6000000010000000" + _RET_ALLOW, r"instruction 0: scratch memory cell 16"),
    ("2000000004000000" * 2, r"its last instruction is no return"),
])
def test_filter_that_is_no_valid_program_refused(image_dir, tmp_path, insns, pattern):
    """A filter the kernel does not take (seccomp(2) EINVAL): the restore built the tree, then failed
    as the stand-in installed it. Refused by the validator now (the kernel's rules for classic BPF
    and seccomp's opcodes), before anything is made."""
    refused(_mutated(image_dir, tmp_path, lambda d: _filters(d, insns, False)),
            r"bad image: process \d+: 'seccomp' filter 0, " + pattern + ".*: not a program the kernel takes",
            tmp_path)


def test_filter_reading_scratch_memory_unwritten_fails_in_one_line(image_dir, tmp_path):
    """The one rule the validator leaves to the kernel (a scratch cell read before it is written):
    refused as the stand-in installs it, in one line naming the process, nothing left."""
    refused(_mutated(image_dir, tmp_path, lambda d: _filters(d, "6000000003000000" + _RET_ALLOW, False)),
            r"process \d+: its seccomp filter: Invalid argument", tmp_path)


def test_filter_that_kills_fails_in_one_line(image_dir, tmp_path):
    """A filter whose first verdict kills the stand-in: refused in one line, nothing left."""
    refused(_mutated(image_dir, tmp_path, lambda d: _filters(d, _RET_KILL_ALL, False)),
            r"process \d+: it ended before it (answered its detach|told)", tmp_path)




def test_filter_is_installed_by_the_stand_in_alone(image_dir, tmp_path):
    """A filter that allows everything: the restored process runs under it (Seccomp: 2), the test
    process (the restorer's parent, whose filters a child could never change) under none."""
    img = _mutated(image_dir, tmp_path, lambda d: _filters(d, _RET_ALLOW, False))
    pid = _restored(img, tmp_path)
    try:
        assert _status(pid, "Seccomp") == "2" and _status("self", "Seccomp") == "0"
    finally:
        _kill(pid)


# --- scheduling attributes (engine/schedattrs.py) ---------------------------------------------

def _restored(img: str, tmp_path) -> int:
    """The pid of the root of `img` restored (the test kills it)."""
    return enginecase.EngineCase(str(tmp_path)).restore(img)


def _kill(pid: int) -> None:
    from zdtm.snapshot import kill_tree
    kill_tree(pid)


def _status(pid, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith(key + ":"))


def _sched(d) -> dict:
    return d["processes"][0]["sched"]


def test_affinity_to_cpus_that_do_not_exist_refused_in_a_short_line(image_dir, tmp_path):
    """CPUs the machine lacks (sched_setaffinity EINVAL): refused in one line that named every one
    of up to 8192 CPUs (a 40 KB line); it names the first few now."""
    line = refused(_mutated(image_dir, tmp_path, lambda d: _sched(d).update(cpus=list(range(4096, 8192)))),
                   r"process \d+: its CPU affinity \[4096, 4097, .*\] \.\.\.: no CPU of it is one this machine lets "
                   r"restore use \(.*\): restore where those CPUs exist", tmp_path)
    assert len(line) < 300, line   # (what to do, and not every CPU: a 40 KB line once)


def test_affinity_to_cpus_some_of_which_do_not_exist_refused(image_dir, tmp_path):
    """CPUs of which some exist and one does not (an image of a bigger machine: [0, 1, 63] on 2 CPUs):
    the kernel would narrow the affinity to those that exist, silently; restore refuses before it
    makes anything, in one line naming the lacking CPU and what to do."""
    have = sorted(os.sched_getaffinity(0))
    lacking = 63 if 63 not in have and os.path.exists("/sys/devices/system/cpu/cpu63") is False else 8191
    line = refused(_mutated(image_dir, tmp_path, lambda d: _sched(d).update(cpus=have[:2] + [lacking])),
                   rf"process \d+: its CPU affinity \[.*{lacking}\]: CPU {lacking} of it is not one this machine "
                   r"lets restore use \(.*\): restore where those CPUs exist.*; refused before anything is made", tmp_path)
    assert len(line) < 300, line


def test_priorities_are_the_images_within_the_restorers_privilege(image_dir, tmp_path):
    """SCHED_FIFO 99, nice -20 and the real-time I/O class are what the image says (IMAGE.md: a
    stand-in runs no code of the image); restore gives them with its own privilege, and fails in
    one line where it lacks it (oom_score_adj -1000 without CAP_SYS_RESOURCE)."""
    from engine import schedattrs
    want = {"policy": 1, "rt_priority": 99, "nice": -20, "ioprio": 1 << 13 | 4}
    pid = _restored(_mutated(image_dir, tmp_path, lambda d: _sched(d).update(want)), tmp_path)
    try:
        got = schedattrs.values(pid)
        assert {k: got[k] for k in want} == want, got
    finally:
        _kill(pid)
    sub = tmp_path / "oom"
    sub.mkdir()
    img = _mutated(image_dir, sub, lambda d: _sched(d).update(oom_score_adj=-1000))
    if schedattrs._have_cap(schedattrs._CAP_SYS_RESOURCE):
        _kill(_restored(img, sub))
    else:
        refused(img, r"process \d+: its oom_score_adj -1000: Permission denied", sub)


def test_personality_that_only_asks_refused(image_dir):
    """Personality 0xffffffff: personality(2) answers the current one and sets nothing, so the
    restore succeeded with another personality than the image's. Refused by the validator now."""
    _invalid(image_dir, lambda d: _sched(d).update(personality=0xFFFFFFFF),
             r"process \d+ sched.*personality|personality.*out of range|personality")


def test_personality_flags_are_the_stand_ins_own(image_dir, tmp_path):
    """READ_IMPLIES_EXEC and ADDR_NO_RANDOMIZE are the image's to give its own stand-in (which runs
    no code of the image and executes nothing); the test process keeps its own."""
    flags = 0x0400000 | 0x0040000
    pid = _restored(_mutated(image_dir, tmp_path, lambda d: _sched(d).update(personality=flags)), tmp_path)
    try:
        with open(f"/proc/{pid}/personality") as f:
            assert int(f.read(), 16) == flags
        with open("/proc/self/personality") as f:
            assert int(f.read(), 16) & flags == 0
    finally:
        _kill(pid)


# --- the audit login uid (engine/loginuid.py) --------------------------------------------------

def _loginuid(pid) -> int:
    with open(f"/proc/{pid}/loginuid") as f:
        return int(f.read())


def test_login_uid_is_written_by_each_stand_in_for_itself(image_dir, tmp_path):
    """A login uid (0: root's session, as the image says: IMAGE.md) goes to the restored process
    alone: the kernel lets a process write only its own, and the restorer opens the file of the
    stand-in's pid, never a pid of the image. The test process's is unchanged."""
    if not os.path.exists("/proc/self/loginuid"):
        pytest.skip("a kernel without audit support has no login uid")
    ours = _loginuid("self")
    want = 0 if ours != 0 else 4242
    pid = _restored(_mutated(image_dir, tmp_path, lambda d: d["processes"][0].update(loginuid=want)), tmp_path)
    try:
        assert (_loginuid(pid), _loginuid("self")) == (want, ours)
    finally:
        _kill(pid)


# --- time namespaces (engine/timens.py) --------------------------------------------------------

def _timens(offset: int, at: int = 0) -> dict:
    return {"id": "time-1", "offsets": {"monotonic": [offset, 0], "boottime": [0, 0]},
            "at": {"monotonic": at, "boottime": 0}}


@pytest.mark.parametrize("key", ["timens", "timens_children"])
def test_time_offset_past_the_kernels_bound_refused(image_dir, key):
    """An offset of 2**62 - 1 s (the old rule's bound) the kernel refuses whatever the clock:
    refused by the validator now, with the kernel's bound."""
    _invalid(image_dir, lambda d: d["processes"][0].update({key: _timens((1 << 62) - 1)}),
             r"seconds within \+-4611686018")


@pytest.mark.parametrize("key, rec", [
    ("timens", _timens(-(1 << 32))),            # (the clock below 0)
    ("timens_children", _timens(0, (1 << 63) - 1)),   # (the clock "lost" 292 years since the dump)
], ids=["negative", "at"])
def test_time_offset_the_kernel_refuses_names_the_process(image_dir, tmp_path, key, rec):
    """Offsets within that bound that the kernel refuses on this machine (ERANGE): the restore
    failed with "Numerical result out of range" alone; it names the process and its namespace."""
    refused(_mutated(image_dir, tmp_path, lambda d: d["processes"][0].update({key: rec})),
            r"process \d+: its time namespace time-1 with offsets .*: Numerical result out of range", tmp_path)


# --- ipc namespace sysctls (engine/ipcvars.py) -------------------------------------------------

def test_sysctls_of_a_namespace_claimed_as_the_hosts_refused(image_dir, tmp_path):
    """The image says its process is in the host's ipc namespace and keeps sysctls for it: restore
    would write them into the host's /proc/sys/kernel. Refused before anything is made; the
    host's msgmax unchanged."""
    def mutate(d):
        p = d["processes"][0]
        p["host_ns"] = sorted(set(p.get("host_ns") or ()) | {"ipc"})
        next(iter(d["sysvipc"].values()))["vars"] = {"kernel/msgmax": 123}
    with open("/proc/sys/kernel/msgmax") as f:
        before = f.read()
    refused(_mutated(image_dir, tmp_path, mutate), r"sysvipc of 'ipc-\d+': an ipc namespace no process is in",
            tmp_path)
    with open("/proc/sys/kernel/msgmax") as f:
        assert f.read() == before


def test_limits_past_the_kernels_refused_in_one_line(image_dir, tmp_path):
    """msgmni of 2**24 (the validator's bound: a kernel booted with ipcmni_extend) where the kernel
    takes 32768: one line naming the namespace and the sysctl."""
    refused(_mutated(image_dir, tmp_path,
                     lambda d: next(iter(d["sysvipc"].values()))["vars"].update({"kernel/msgmni": 1 << 24})),
            r"ipc namespace ipc-\d+: ipc namespace sysctl kernel/msgmni = 16777216: Invalid argument", tmp_path)


def test_huge_shared_memory_limits_make_nothing(image_dir, tmp_path):
    """shmmax and shmall at their highest, msgmni and shmmni at 32768: limits, not memory (a fresh
    namespace's shmmax is near that already): restored, and the namespace has them."""
    from engine import ipcvars
    big = {"kernel/shmmax": (1 << 64) - 1, "kernel/shmall": (1 << 64) - 1, "kernel/msgmni": 32768,
           "kernel/shmmni": 32768}
    pid = _restored(_mutated(image_dir, tmp_path, lambda d: next(iter(d["sysvipc"].values()))["vars"].update(big)),
                    tmp_path)
    try:
        got = ipcvars.of_process(pid)
        assert {k: got[k] for k in big} == big
    finally:
        _kill(pid)


# --- TCP connections, waiting connections, datagrams (engine/fds/inet*.py) ----------------------

def _host_net_sockets(required: bool = True) -> tuple:
    """A TCP listener and a UDP socket of the host's network namespace on the ports the image uses;
    when another test holds them, a skip (`required`) or (None, None)."""
    import socket
    lst, udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        lst.bind(("127.0.0.1", PORT))
        udp.bind(("127.0.0.1", UDP))
    except OSError:
        lst.close()
        udp.close()
        if required:
            pytest.skip(f"ports {PORT}, {UDP} of the host are taken (by another test)")
        return None, None
    lst.listen(8)
    lst.setblocking(False)
    udp.setblocking(False)
    return lst, udp


def _nothing_came(lst, udp) -> None:
    """Neither socket of `_host_net_sockets` got anything (None: not checked)."""
    for s, what in ((lst, "a connection"), (udp, "a datagram")):
        if s is None:
            continue
        try:
            s.accept() if s is lst else s.recv(100)
        except BlockingIOError:
            continue
        pytest.fail(f"{what} reached the host's network namespace")


def test_connections_and_datagrams_stay_in_the_trees_namespace(image_dir, tmp_path):
    """The restore connects the waiting client, sends its bytes and the waiting datagram from their
    senders (a raw socket) and lets the connections out of repair mode: all in the network namespace
    it made for the tree. A host listener and UDP socket on those ports get nothing; the tree's
    socket has the datagram again."""
    import socket
    from enginecase import grab_fd
    lst, udp = _host_net_sockets()
    try:
        pid = _restored(image_dir, tmp_path)
        try:
            with socket.socket(fileno=grab_fd(pid, 14)) as r:
                r.settimeout(10)
                assert r.recvfrom(100) == (b"one", ("127.0.0.1", UDP + 1))
            _nothing_came(lst, udp)
        finally:
            _kill(pid)
    finally:
        lst.close()
        udp.close()


def test_sockets_in_the_hosts_namespace_refused(image_dir, tmp_path):
    """The image says its process is in the restorer's network namespace: its TCP connections (in
    repair mode), its waiting client and its datagrams would be made among the host's ports, the
    datagram forged from a raw socket of the host's. Refused before anything is made."""
    lst, udp = _host_net_sockets()
    try:
        def mutate(d):
            p = d["processes"][0]
            p["host_ns"] = sorted(set(p.get("host_ns") or ()) | {"net"})
        refused(_mutated(image_dir, tmp_path, mutate), r"fd \d+: a inet socket of the restorer's own network namespace", tmp_path)
        _nothing_came(lst, udp)
    finally:
        lst.close()
        udp.close()


_PAST_16_MIB = "QUJD" * ((1 << 24) // 3 + 1)   # (base64 of 16 MiB and 3 bytes)


@pytest.mark.parametrize("key, change, pattern", [
    ("tcp", lambda f: f.update(peer="192.0.2.1"), "a peer off loopback"),
    ("pending", lambda f: f.update(peer="192.0.2.1"), "a peer off loopback"),
    ("tcp", lambda f: f.update(addr="192.0.2.1"), "a peer off loopback"),
    ("dgrams", lambda f: f["dgrams"][0].update({"from": "192.0.2.1"}), "off loopback"),
    ("dgrams", lambda f: f["dgrams"][0].update({"from": "::ffff:192.0.2.1"}), "off loopback or of another family"),
    ("tcp", lambda f: f["tcp"].update(recvq=_PAST_16_MIB), r"'tcp.recvq' must be base64 of at most 16777216"),
    ("pending", lambda f: f["pending"].update(sent=_PAST_16_MIB), r"'pending.sent' must be base64 of at most"),
    ("dgrams", lambda f: f.update(dgrams=[f["dgrams"][0]] * 4097), "dgrams"),
    # (restore packed its UDP length into 16 bits: "restore failed: error: 'H' format requires ...")
    ("dgrams", lambda f: f["dgrams"][0].update(data="QUJD" * 21845), r"a UDP datagram of more than 65507 bytes"),
    # (4 MiB a socket, as dump keeps: restore queued 30 MB on one, its buffer forced wide)
    ("dgrams", lambda f: f.update(dgrams=[dict(f["dgrams"][0], data="QUJD" * 10000)] * 1000),
     r"more than 4194304 bytes of UDP datagrams"),
], ids=["tcp-peer", "pending-peer", "tcp-addr", "dgram-sender", "dgram-mapped-sender", "tcp-queue",
        "pending-bytes", "dgram-count", "dgram-too-long", "dgram-bytes"])
def test_network_values_out_of_the_trees_reach_refused(image_dir, tmp_path, key, change, pattern):
    """A peer or sender off loopback (the restored namespace has lo alone: a packet to it would be
    routed nowhere, and the image would name hosts it never reached), queues past 16 MiB, more
    than 4096 datagrams: refused in one line before anything is made."""
    refused(_mutated(image_dir, tmp_path, lambda d: change(_fds(d, key)[0])), pattern, tmp_path)


# --- fuzz: session 19's fields mutated at random --------------------------------------------------

def _fuzz_base(image_dir: str, tmp: str) -> tuple[str, dict]:
    """A copy of the image whose process also has a filter that allows everything, a time
    namespace and a login uid (the dump has none of them), and its manifest."""
    work = enginecase.copy_image(image_dir, tmp)
    doc = load_manifest(work)
    p = doc["processes"][0]
    p.update(seccomp=[{"insns": _RET_ALLOW, "log": False}], timens=_timens(1000), loginuid=4242)
    return work, doc


def _surface(doc) -> list[tuple]:
    """The places of session 19's fields in the image (paths into it): a process's scheduling
    attributes, time namespaces, filters, login uid; the ipc namespaces' sysctls; the inet fds'
    connections, waiting clients, datagrams and the addresses they are made with."""
    from test_hardening_images import _nodes

    def dicts(v):
        return v if isinstance(v, dict) else {}
    roots = [("sysvipc", k, "vars") for k, v in dicts(doc.get("sysvipc")).items() if "vars" in dicts(v)]
    for i, p in enumerate(doc.get("processes") if isinstance(doc.get("processes"), list) else ()):
        roots += [("processes", i, k) for k in ("sched", "timens", "timens_children", "seccomp", "loginuid",
                                                  "no_new_privs") if k in dicts(p)]
        for j, f in enumerate(dicts(p).get("fds") if isinstance(dicts(p).get("fds"), list) else ()):
            if dicts(f).get("kind") == "inet":
                roots += [("processes", i, "fds", j, k) for k in ("tcp", "pending", "dgrams", "addr", "port", "peer",
                                                                  "peer_port", "queued") if k in f]
    out = []
    for root in roots:
        out += [root + path for path, _ in _nodes(enginecase.at(doc, root))]
    return out


def _outcome_no_host_change(work: str, doc: dict, tmp: str) -> None:
    """Restore `work` (test_hardening_images.restore_outcome: one line or success, no leak), the
    host's ipc namespace, its msgmax and its sockets on the image's ports untouched."""
    from test_hardening_s19 import _host_ipc
    enginecase.save_manifest(work, doc)
    before = _host_ipc()
    with open("/proc/sys/kernel/msgmax") as f:
        msgmax = f.read()
    lst, udp = _host_net_sockets(required=False)
    try:
        code, err = restore_outcome(work, list(enginecase.RESTORE_EXTERNALS), tmp)
        # (--hypothesis-show-statistics: how many reach restore, and how far)
        event("restored" if code == 0 else "refused: " + re.sub(r"\d+", "N", err.split(":")[1].strip())[:40])
        _nothing_came(lst, udp)
    finally:
        for s in (lst, udp):
            if s is not None:
                s.close()
    assert _host_ipc() <= before, f"restore made objects in the host's ipc namespace: {_host_ipc() - before}"
    with open("/proc/sys/kernel/msgmax") as f:
        assert f.read() == msgmax, "restore changed the host's msgmax"


_EXAMPLES = int(os.environ.get("MNTCR_S20_EXAMPLES") or 0)


@settings(max_examples=_EXAMPLES or 12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(muts=_MUTATIONS)
def test_fuzz_session_19_fields(image_dir, muts):
    """Random changes (hostile values, deletions, duplicates) of session 19's fields: restore
    refuses in one line (exit 2, no traceback) or restores (the tree is then killed); never a
    leak, never a change of the host's ipc namespace or a packet to its ports."""
    with tempfile.TemporaryDirectory(prefix="mntcr-s20-") as tmp:
        work, doc = _fuzz_base(image_dir, tmp)
        enginecase.mutate(doc, muts, _surface)
        try:
            json.dumps(doc).encode()
        except (ValueError, UnicodeEncodeError):
            return   # (not representable as JSON)
        _outcome_no_host_change(work, doc, tmp)


@settings(max_examples=_EXAMPLES or 10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(-2, 1 << 33), st.binary(max_size=64),
                                  st.booleans()), min_size=1, max_size=4))
def test_fuzz_session_19_values_in_range(image_dir, changes):
    """As above with values of the field's own type (near its old one, or any, a string of random
    bytes in base64 or as they are), so that more images pass the validator and reach what restore
    makes of them: sequence numbers, windows, queues, offsets, priorities, sysctls."""
    with tempfile.TemporaryDirectory(prefix="mntcr-s20-") as tmp:
        work, doc = _fuzz_base(image_dir, tmp)
        enginecase.mutate_in_range(doc, changes, _surface, _in_range, kinds=(int, str))
        _outcome_no_host_change(work, doc, tmp)


# --- found on the way: a long IPv6 datagram (engine/fds/inet_raw.py) ------------------------------

_LONG_V6 = """
import socket
r = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); r.bind(("::1", 5000))
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::1", 5001))
u.sendto(bytes(range(256)) * 255 + b"y" * 247, ("::1", 5000)); u.sendto(b"z", ("::1", 5000))
os.dup2(r.fileno(), 10); os.dup2(u.fileno(), 11)
"""


def test_long_ipv6_datagram_kept(case):
    """A datagram of 65527 bytes from an IPv6 sender (its socket fragmented it: more than lo's MTU
    in one packet) waits: dump gave the datagrams back through a raw socket in one packet each,
    which failed (EMSGSIZE): the dump failed ("inet: Message too long") and the tree had lost every
    datagram waiting. Sent as fragments now: after C/R (twice) both wait, whole, from their sender."""
    import socket
    from enginecase import grab_fd
    from test_engine_inet import _in_netns
    _, _, after = case.roundtrip(_in_netns(_LONG_V6), iters=2)
    with socket.socket(fileno=grab_fd(after.pid, 10)) as r:
        got = [r.recvfrom(70000, socket.MSG_DONTWAIT) for _ in range(2)]
    assert [(d, a[:2]) for d, a in got] == [(bytes(range(256)) * 255 + b"y" * 247, ("::1", 5001)),
                                            (b"z", ("::1", 5001))]


def _with_a_child(d, root_denies_kill: bool) -> None:
    """A second process, child of the first (no fd), both in the restorer's pid namespace (the root
    stand-in is no init whose end kills the rest); the child's filter, installed last, makes every
    call fail (its last word never comes; it spins); the root's, when `root_denies_kill`, makes
    kill(2) and pidfd_send_signal(2) fail (it cannot kill the tree on its lifeline)."""
    import copy
    root = d["processes"][0]
    child = copy.deepcopy(root)
    child.update(pid=root["pid"] + 1, ppid=root["pid"], fds=[], seccomp=[{"insns": _RET_ERRNO_ALL, "log": False}],
                 no_new_privs=True)
    for k in ("sid", "pgid", "maps"):
        child.pop(k, None)
    d["processes"].append(child)
    for p in d["processes"]:
        p["host_ns"] = sorted(set(p.get("host_ns") or ()) | {"pid"})
    if root_denies_kill:
        nrs = {"x86_64": (62, 424), "aarch64": (129, 424)}[os.uname().machine]
        prog = [(0x20, 0, 0, 0), (0x15, 2, 0, nrs[0]), (0x15, 1, 0, nrs[1]), (0x06, 0, 0, 0x7FFF0000),
                (0x06, 0, 0, 0x50001)]
        _filters(d, b"".join(struct.pack("=HBBI", *i) for i in prog).hex(), False)


@pytest.mark.parametrize("root_denies_kill", [False, True], ids=["root", "root-denies-kill"])
def test_silent_child_is_killed_with_the_failed_restore(image_dir, tmp_path, root_denies_kill):
    """A child stand-in that never tells how its last steps went (its filter denies every call,
    pause() too: it spins): the restore failed after 60 s ("process N: timed out") and left it
    running, spinning, for good: it had dropped its PDEATHSIG as it detached, and the root stand-in,
    whose lifeline kills the tree, is detached last and died with the restorer. The restorer kills
    the stand-ins it detached when the detach fails now (also when the root's filter would keep it
    from killing them)."""
    refused(_mutated(image_dir, tmp_path, lambda d: _with_a_child(d, root_denies_kill)),
            r"process \d+: it did not tell how its last steps went in 60 s", tmp_path, timeout=100)


def _in_range(old, number: int, raw: bytes, near: bool):
    """A number (moved up by up to two, or any), bytes in base64 or as they are."""
    import base64
    if type(old) is int:
        return old + number % 3 if near else number
    return base64.b64encode(raw).decode() if near else raw.decode("latin-1")
