"""Hostile images and hostile trees against session 21's surface: POSIX and interval timers and
the signals they deliver (engine/posixtimers.py, engine/itimers.py, engine/timersigs.py), a lone
network namespace bound on a file (nsfs `lone_ns`, `bound_ns`), a network namespace's sysctls and
lo (engine/netvars.py, `net_lo_up`), and the stand-in executed again inside its user namespace
(engine/reexec.py).

The image is a real dump of a tree with each of those (`ip netns add` with lo up and a sysctl set,
a process in a network namespace of its own with a sysctl set, a POSIX timer whose SIGUSR1 it
catches, an interval timer), changed the way an attacker with write access to the image directory
would. Each is refused with exit status 2 and one line, nothing left running or mounted, nothing of
the host touched (test_hardening_hostile.refused), or restores with what the image says given to
the tree alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import enginecase
from engine import inject
from enginecase import case, load_manifest  # noqa: F401  (fixture)
from test_hardening_hostile import _mutated, refused

_BODY = """
import ctypes, signal, struct
libc = ctypes.CDLL(None, use_errno=True)
def ok(r):
    if r == -1:
        raise OSError(ctypes.get_errno(), "setup")
    return r
open("/proc/sys/net/unix/max_dgram_qlen", "w").write("77")
signal.signal(signal.SIGUSR1, lambda *_: None)
signal.signal(signal.SIGALRM, lambda *_: None)
sev = ctypes.create_string_buffer(struct.pack("=Qiii", 42, signal.SIGUSR1, 0, 0).ljust(64, b"\\0"), 64)
t = ctypes.c_int()
ok(libc.timer_create(1, sev, ctypes.byref(t)))
ok(libc.timer_settime(ctypes.c_void_p(t.value), 0, struct.pack("=4q", 7, 0, 3600, 0), None))
signal.setitimer(signal.ITIMER_REAL, 3600, 5)
import socket
srv = socket.socket(socket.AF_UNIX)
srv.bind("/run/.s22.tmp")   # (bound under a temporary name, renamed into place: supervisord's way)
os.rename("/run/.s22.tmp", "/run/s22.sock")
srv.listen(4)
"""
SETUP = """
mkdir -p /mnt/mq
mount -t mqueue mq /mnt/mq
chown 5:6 /mnt/mq; chmod 1730 /mnt/mq
ip netns add blue
nsenter --net=/run/netns/blue ip link set lo up
nsenter --net=/run/netns/blue sh -c 'echo 55 > /proc/sys/net/unix/max_dgram_qlen'
""" + "exec unshare -n " + enginecase.py_hold(_BODY)[len("exec "):]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The dumped tree of SETUP."""
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed: the tree binds a network namespace with it")
    if not inject.SUPPORTED:
        pytest.skip("timers are read by calls made in the process: engine/inject.py runs them on x86_64 only")
    yield from enginecase.dumped_image(tmp_path_factory, SETUP,
                                       "hostile image tests need root (they dump a real container and restore)")


def _hold(d) -> dict:
    """The holding process (the one with timers, in a network namespace of its own)."""
    return next(p for p in d["processes"] if p.get("posix_timers"))


def _lone(d) -> tuple[str, str]:
    """(superblock id, lone network namespace id) of the `ip netns add` bind."""
    return next((sid, sb["lone_ns"][0]) for sid, sb in d["superblocks"].items() if sb.get("lone_ns"))


def test_image_has_what_the_tests_change(image_dir):
    d = load_manifest(image_dir)
    p = _hold(d)
    sid, lone = _lone(d)
    assert [t["signo"] for t in p["posix_timers"]] == [10], p["posix_timers"]
    assert [t["which"] for t in p["itimers"]] == [0], p["itimers"]
    assert p["timer_sig_caught"] == (1 << 9) | (1 << 13), p.get("timer_sig_caught")
    assert d["netvars"][p["ns"]["net"]] == {"unix/max_dgram_qlen": "77\n"}, d["netvars"]
    assert d["netvars"][lone] == {"unix/max_dgram_qlen": "55\n"}, d["netvars"]
    assert lone in d["net_lo_up"], d.get("net_lo_up")
    assert any(sb.get("payload") == {"root": {"mode": 0o1730, "uid": 5, "gid": 6}} for sb in d["superblocks"].values())
    assert _listener(d)["path"] == "/run/.s22.tmp" and _listener(d)["bound"]["path"] == "/run/s22.sock", _listener(d)


def _listener(d) -> dict:
    """The holding process's unix listener's fd entry."""
    return next(f for f in _hold(d)["fds"] if f.get("listen"))


def _try(image_dir, tmp_path, mutate) -> tuple[int, str]:
    """Restore the image changed by `mutate`: (exit status, stderr), the tree killed when it ran."""
    from test_hardening_images import restore_outcome
    img = _mutated(image_dir, tmp_path, mutate)
    return restore_outcome(img, list(enginecase.RESTORE_EXTERNALS), str(tmp_path))


# --- timers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("signo", [9, 19])
def test_an_uncatchable_timer_signal_caught_is_refused_by_the_validator(image_dir, tmp_path, signo):
    """A timer of SIGKILL or SIGSTOP with that signal in timer_sig_caught (the kernel never shows
    either caught): refused by the image check naming it, not by the stand-in's sigaction failing
    in its last steps ("rt_sigaction: Invalid argument")."""
    def mutate(d):
        p = _hold(d)
        p["posix_timers"][0]["signo"] = signo
        p["timer_sig_caught"] = (p["timer_sig_caught"] & ~(1 << 9)) | 1 << (signo - 1)
    refused(_mutated(image_dir, tmp_path, mutate), r"timer_sig_caught.*SIGKILL and SIGSTOP cannot be caught", tmp_path)


# --- network namespaces' sysctls ------------------------------------------------------------------

def test_a_congestion_control_the_kernel_has_not_loaded_is_refused(image_dir, tmp_path):
    """net/ipv4/tcp_congestion_control naming a module the kernel has not loaded: written by the
    restorer (CAP_NET_ADMIN of the host's) it would have the kernel run modprobe tcp_NAME on the host
    (tcp_ca_find_autoload). Refused before any write, naming what to do; before, the write was made
    (here "No such file or directory": this kernel has no modules)."""
    def mutate(d):
        d["netvars"][_hold(d)["ns"]["net"]]["ipv4/tcp_congestion_control"] = "mntcrnone\n"
    refused(_mutated(image_dir, tmp_path, mutate),
            r"tcp_congestion_control = 'mntcrnone': not loaded by this kernel .*load it on the host first", tmp_path)


def test_a_loaded_congestion_control_is_restored(image_dir, tmp_path):
    """One the kernel has (reno, always built in) is written: the check lets a real one through."""
    def mutate(d):
        d["netvars"][_hold(d)["ns"]["net"]]["ipv4/tcp_congestion_control"] = "reno\n"
    assert _try(image_dir, tmp_path, mutate) == (0, "")


# --- the stand-in executed again inside its user namespace (engine/reexec.py) ---------------------

_REEXEC = """
import os, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
from engine import reexec
libc = next(line.split()[5] for line in open("/proc/self/maps") if "/libc.so" in line)
how = sys.argv[2]
if how == "libc":   # (a copy of the C library bound over it: another file where the loader looks)
    subprocess.run(["cp", libc, "/tmp/.mntcr-s22-libc"], check=True)
    subprocess.run(["mount", "--bind", "/tmp/.mntcr-s22-libc", libc], check=True)
elif how == "etc":   # (a tmpfs over /etc, where ld.so.preload and the loader's cache are)
    subprocess.run(["mount", "-t", "tmpfs", "image", "/etc"], check=True)
elif how == "env":
    os.environ["LD_PRELOAD"] = "/nonexistent/mntcr-s22.so"
    os.environ["PYTHONWARNINGS"] = "error::mntcr_s22_nonexistent.Warning"
a, b = socket.socketpair()
a.close()   # (an executed stand-in finds its channel closed and exits 1)
reexec.into_userns(b.fileno())
print("returned", flush=True)
"""


def _reexec(how: str):
    import subprocess
    import sys
    from test_engine_reexec import ROOT
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-S", "-c", _REEXEC, ROOT,
                               how], capture_output=True, text=True, timeout=60)
    finally:
        if os.path.exists("/tmp/.mntcr-s22-libc"):
            os.unlink("/tmp/.mntcr-s22-libc")


@pytest.mark.parametrize("how", ["libc", "etc"])
def test_no_exec_where_the_loader_would_map_anothers_code(how):
    """A mount over the C library, or over /etc (ld.so.preload, ld.so.cache), in the stand-in's view
    (a restored root that is the host's, with the image's mounts on it): the stand-in, which holds
    the host's root ids, goes on as forked instead of executing the interpreter, whose loader would
    map the image's code. Before, only the standard library's and the engine's directories were
    looked at: it executed."""
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts in a namespace of its own)")
    r = _reexec(how)
    assert r.stdout.strip() == "returned", (r.returncode, r.stdout, r.stderr[-500:])


def test_exec_takes_no_loader_or_interpreter_variable_of_the_restorers():
    """LD_PRELOAD and PYTHON* variables of the restorer's environment name paths the executed
    interpreter would look up in the stand-in's view: they are not passed (it executes, and neither
    the loader nor the warnings filter reads them). Before, both were: the loader complained."""
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare -m)")
    r = _reexec("env")
    assert "returned" not in r.stdout and r.returncode == 1, (r.returncode, r.stdout, r.stderr[-500:])
    assert "mntcr-s22" not in r.stderr and "mntcr_s22" not in r.stderr, r.stderr[-500:]


# --- namespaces bound on files: the lone one and the ones the processes are in --------------------

def _unlone(d) -> dict:
    """Drop the lone namespace (its netvars, its lo): the bind is free to name another; its mount."""
    sid, lone = _lone(d)
    del d["superblocks"][sid]["lone_ns"]
    del d["netvars"][lone]
    d["net_lo_up"].remove(lone)
    return next(m for ns in d["mntns"].values() for m in ns["mounts"] if m.get("bound_ns"))


def _lone_is_the_process(d):
    sid, lone = _lone(d)
    _unlone(d)
    d["superblocks"][sid]["lone_ns"] = [_hold(d)["ns"]["net"]]


def _bound_is_the_hosts(kind: str):
    def mutate(d):
        m, p = _unlone(d), _hold(d)
        if kind not in p.setdefault("host_ns", []):
            p["host_ns"].append(kind)
        d["netvars"].pop(p["ns"]["net"], None) if kind == "net" else None
        m["bound_ns"] = p["ns"][kind]
    return mutate


@pytest.mark.parametrize("mutate, pattern", [
    (_lone_is_the_process, r"lone namespace 'net-\d+' is no net-N apart from the processes' ones"),
    (_bound_is_the_hosts("net"), r"binds namespace net-\d+, which the image does not make"),
    (_bound_is_the_hosts("cgroup"), r"binds namespace cgroup-\d+, which the image does not make"),
], ids=["lone-is-a-process's", "bound-host-net", "bound-host-cgroup"])
def test_a_bind_of_the_hosts_namespace_or_a_confused_lone_one_is_refused(image_dir, tmp_path, mutate, pattern):
    """A lone namespace that is a process's (restore would make it twice, its sysctls written where
    the process is), a bind naming a namespace a process has as the host's (restore would bind the
    restorer's own network or cgroup namespace into the tree): refused by the image check."""
    refused(_mutated(image_dir, tmp_path, mutate), pattern, tmp_path)


# --- hostile trees: what the dump reads changes while it reads it ---------------------------------

_CHURN_LIB = """
import ctypes, os, random, signal, struct, threading
libc = ctypes.CDLL(None, use_errno=True)
signal.signal(signal.SIGUSR1, lambda *_: None)
def make(clock, signo, notify, tid=0):
    sev = ctypes.create_string_buffer(struct.pack("=Qiii", 7, signo, notify, tid).ljust(64, b"\\0"), 64)
    t = ctypes.c_int()
    if libc.timer_create(clock, sev, ctypes.byref(t)) != 0:
        return None
    libc.timer_settime(ctypes.c_void_p(t.value), 0, struct.pack("=4q", 0, 0, 600 + random.randrange(60), 0), None)
    return t.value
"""
# Timers made and deleted without end by a second thread (ids move on; with `odd`, now and then
# one dump refuses: on the process's CPU clock named by its pid, or notifying that thread).
_TIMERS_CHURN = _CHURN_LIB + """
def churn(odd):
    live = []
    while True:
        if odd and random.random() < 0.3:
            clock = -((os.getpid() << 3) + 8) + 6 if random.random() < 0.5 else 1   # (~pid << 3 | SCHED)
            live.append(make(clock, signal.SIGUSR1, 4 if clock == 1 else 0, threading.get_native_id()))
        else:
            live.append(make(random.choice((0, 1, 7)), signal.SIGUSR1, random.choice((0, 1))))
        if len(live) > 8:
            t = live.pop(random.randrange(len(live)))
            if t is not None:
                libc.timer_delete(ctypes.c_void_p(t))
threading.Thread(target=churn, args=(ODD,), daemon=True).start()
"""
# The tree's own network namespace's sysctls written without end by a second thread.
_NETVARS_CHURN = """
import random, threading
def churn():
    while True:
        for name, v in (("unix/max_dgram_qlen", random.randrange(20, 90)), ("ipv4/ip_default_ttl", random.randrange(2, 250))):
            with open("/proc/sys/net/" + name, "w") as f:
                f.write(str(v))
threading.Thread(target=churn, daemon=True).start()
"""
# A bind of the tree's own uts namespace made and unmounted without end by a second thread.
_BIND_CHURN = """
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
open("/run/.uts", "w").close()
def churn():
    while True:
        libc.mount(b"/proc/self/ns/uts", b"/run/.uts", None, 4096, None)   # (MS_BIND)
        libc.umount2(b"/run/.uts", 2)   # (MNT_DETACH)
threading.Thread(target=churn, daemon=True).start()
"""


def _alive_and_running(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "RSD"


def dumped_whole_or_refused_running(case, pid: int, rounds: int = 3) -> list[str]:
    """Dump the tree at `pid` (changing all the time) `rounds` times: each dump succeeds and its image
    restores (the next round dumps the restored tree), or is refused in one line with the tree
    running on; the outcomes ("restored" or "refused: LINE"), printed too."""
    outcomes = []
    for _ in range(rounds):
        images = case.new_images_dir()
        try:
            case.dump(pid, images)
        except enginecase.CRError as e:
            lines = e.proc.stderr.strip().splitlines()
            assert e.proc.returncode == 2 and len(lines) == 1 and "Traceback" not in e.proc.stderr, e.proc.stderr
            assert _alive_and_running(pid), f"a refused dump left the tree stopped or gone: {lines[0]}"
            outcomes.append("refused: " + lines[0])
            continue
        pid = case.restore(images)   # (raises CRError when the image it dumped is refused)
        outcomes.append("restored")
    print(outcomes)
    return outcomes


@pytest.mark.parametrize("body, whole", [
    (_TIMERS_CHURN.replace("ODD", "False"), True), (_TIMERS_CHURN.replace("ODD", "True"), False),
    (_NETVARS_CHURN, True), (_BIND_CHURN, False),
], ids=["timers", "timers-some-refused", "netns-sysctls", "nsfs-bind"])
def test_a_tree_changing_what_dump_reads_is_dumped_whole_or_refused_running(case, body, whole):
    """A process making and deleting POSIX timers (some of kinds dump refuses), writing its network
    namespace's sysctls, or binding and unmounting its uts namespace, all the time: each of three
    dumps either succeeds and the image restores, or is refused in one line with the tree running
    on (resumed if it was stopped) - never a hang, never an image restore refuses. (`whole`: the
    tree holds nothing dump refuses, so each dump must succeed.)"""
    if not inject.SUPPORTED:
        pytest.skip("timers are read by calls made in the process: engine/inject.py runs them on x86_64 only")
    setup = enginecase.py_hold(body)
    if body == _NETVARS_CHURN:
        setup = "exec unshare -n " + setup[len("exec "):]
    pid = case.start(setup)
    outcomes = dumped_whole_or_refused_running(case, pid)
    if whole:
        assert outcomes == ["restored"] * 3, outcomes


# --- fuzz: session 21's fields mutated at random --------------------------------------------------

def _surface(doc) -> list[tuple]:
    """The places of session 21's fields in the image: each process's POSIX timers, interval timers
    and caught timer signals, its unix sockets' names and files, the netvars and net_lo_up, the
    superblocks' lone namespaces and the mounts' bound ones."""
    from test_hardening_images import _nodes

    def dicts(v):
        return v if isinstance(v, dict) else {}

    def items(v):
        return enumerate(v) if isinstance(v, list) else ()
    roots = [(k,) for k in ("netvars", "net_lo_up") if k in doc]
    roots += [("superblocks", s, "lone_ns") for s, sb in dicts(doc.get("superblocks")).items() if "lone_ns" in dicts(sb)]
    for n, ns in dicts(doc.get("mntns")).items():
        roots += [("mntns", n, "mounts", i, "bound_ns") for i, m in items(dicts(ns).get("mounts"))
                  if "bound_ns" in dicts(m)]
    for i, p in items(doc.get("processes")):
        roots += [("processes", i, k) for k in ("posix_timers", "itimers", "timer_sig_caught") if k in dicts(p)]
        for j, f in items(dicts(p).get("fds")):   # (a unix socket's name and file: bound beside, renamed)
            roots += [("processes", i, "fds", j, k) for k in ("path", "bound", "mode") if "bound" in dicts(f)
                      and k in f]
    out = []
    for root in roots:
        out += [root + path for path, _ in _nodes(enginecase.at(doc, root))]
    return out


_HOST_NET = ("unix/max_dgram_qlen", "ipv4/ip_default_ttl", "ipv4/tcp_congestion_control", "ipv4/ping_group_range",
             "ipv6/conf/all/disable_ipv6", "core/somaxconn")


def _ours() -> tuple:
    """What a restore must leave as it is here: our network namespace's sysctls, our signal mask and
    handlers of the timer signals, our timers."""
    import signal
    net = []
    for name in _HOST_NET:
        try:
            with open("/proc/sys/net/" + name) as f:
                net.append(f.read())
        except OSError:
            net.append(None)
    with open("/proc/self/status") as f:
        masks = [line for line in f if line.startswith(("SigBlk", "SigCgt"))]
    with open("/proc/self/timers") as f:
        timers = f.read()
    return net, masks, signal.getitimer(signal.ITIMER_REAL)[0] > 0, timers, os.readlink("/proc/self/ns/net")


def _outcome_host_unchanged(work: str, doc: dict, tmp: str) -> None:
    """Restore `work` (test_hardening_images.restore_outcome: one line or success, no leak); our
    network namespace, mask, handlers and timers untouched."""
    from test_hardening_images import restore_outcome
    enginecase.save_manifest(work, doc)
    before = _ours()
    code, err = restore_outcome(work, list(enginecase.RESTORE_EXTERNALS), tmp)
    event("restored" if code == 0 else "refused: " + re.sub(r"\d+", "N", err.split(":")[1].strip())[:40])
    assert _ours() == before


_EXAMPLES = int(os.environ.get("MNTCR_S22_EXAMPLES") or 0)


def _mutations():
    from test_hardening_s19 import _MUTATIONS
    return _MUTATIONS


@settings(max_examples=_EXAMPLES or 10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(muts=_mutations())
def test_fuzz_session_21_fields(image_dir, muts):
    """Random changes (hostile values, deletions, duplicates) of session 21's fields: restore
    refuses in one line (exit 2, no traceback) or restores (the tree is then killed); never a leak,
    never a change of our network namespace's sysctls, our mask, handlers or timers."""
    with tempfile.TemporaryDirectory(prefix="mntcr-s22-") as tmp:
        work = enginecase.copy_image(image_dir, tmp)
        doc = load_manifest(work)
        enginecase.mutate(doc, muts, _surface)
        try:
            json.dumps(doc).encode()
        except (ValueError, UnicodeEncodeError):
            return   # (not representable as JSON)
        _outcome_host_unchanged(work, doc, tmp)


@settings(max_examples=_EXAMPLES or 10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(-(1 << 33), 1 << 33),
                                  st.sampled_from(["1\n", "0\n", "reno\n", "bbr\n", "-1\n", "4096 8192\n", "x" * 1025,
                                                   "../x", "net-0", "net-1", "pid-0", "uts-0", "lo\n"]),
                                  st.booleans()), min_size=1, max_size=4))
def test_fuzz_session_21_values_in_range(image_dir, changes):
    """As above with values of the field's own type (near its old one, or any; a sysctl text or a
    namespace id), so that more images pass the validator and reach what restore makes of them:
    timer ids, clocks, signals, values, the sysctls' texts and names, the namespace ids."""
    with tempfile.TemporaryDirectory(prefix="mntcr-s22-") as tmp:
        work = enginecase.copy_image(image_dir, tmp)
        doc = load_manifest(work)
        enginecase.mutate_in_range(doc, changes, _surface, enginecase.near_or_text)
        if "netvars" in doc and doc["netvars"] and not changes[0][3]:
            # (a name of the netvars renamed now and then: names are keys, not values)
            ns = sorted(doc["netvars"])[changes[0][0] % len(doc["netvars"])]
            if doc["netvars"][ns]:
                old = sorted(doc["netvars"][ns])[0]
                new = ["ipv4/tcp_congestion_control", "ipv4/conf/eth0/forwarding", "core/../../kernel/x",
                       "ipv4/neigh/default/gc_thresh1", "unix/max_dgram_qlen"][changes[0][1] % 5]
                doc["netvars"][ns][new] = doc["netvars"][ns].pop(old)
                note(f"netvars {ns}: {old} renamed {new}")
        _outcome_host_unchanged(work, doc, tmp)


# --- a unix socket's file on the host's files (an external mount) ---------------------------------

def _on_external(base: str, path: str | None = None):
    """The listener's socket file named `base` in the directory of the /etc external mount (given
    at restore as a directory of the test's); bound under `path` (its own temporary name, else
    the file's own)."""
    def mutate(d):
        etc = next(m for ns in d["mntns"].values() for m in ns["mounts"] if m.get("external") == "etc")
        e = _listener(d)
        etc["mount_opts"] = [o for o in etc["mount_opts"] if o != "ro"]   # (the user's directory, writable)
        e["bound"] = {"mnt": etc["id"], "path": "/" + base}   # (beneath the mount)
        e["path"] = path or "/etc/" + base
    return mutate


def _restore_with_etc(img: str, etc: str, tmp_path) -> tuple[int, str]:
    """Restore `img` with its /etc external given as directory `etc`: (exit status, stderr); the tree
    killed when it ran."""
    from zdtm.snapshot import kill_tree
    pidfile = str(tmp_path / "s22.pid")
    r = enginecase.mntcr("restore", "-D", img, "--external", "mnt[usr]:/usr", "--external", f"mnt[etc]:{etc}",
                         "--pidfile", pidfile, timeout=60)
    if r.returncode == 0:
        with open(pidfile) as f:
            kill_tree(int(f.read()))
    return r.returncode, r.stderr.strip()


def test_a_renamed_socket_file_replaces_no_file_of_the_host(image_dir, tmp_path):
    """A listener bound under a temporary name whose socket file was renamed onto the name of a
    regular file of an external directory (the host's /etc, given by the user): restore binds it
    beside and renames it into place - over the host's file, which it replaced with a socket before.
    Refused in one line; the file is as it was."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "shadow").write_text("root:secret\n")
    code, err = _restore_with_etc(_mutated(image_dir, tmp_path, _on_external("shadow", "/etc/.s22.tmp")), str(etc),
                                  tmp_path)
    assert (etc / "shadow").is_file() and (etc / "shadow").read_text() == "root:secret\n", err
    assert code == 2 and re.search(r"shadow.*is another file", err), err
    assert sorted(os.listdir(etc)) == ["shadow"], os.listdir(etc)


def test_a_live_socket_of_the_host_is_not_taken_over(image_dir, tmp_path):
    """A listener whose socket file is named as a live listening socket of an external directory
    (a host daemon's, in a directory the user gave): restore unlinked it as the dumped socket's
    stale node and bound the tree's listener there - the host's clients then reached the tree.
    Refused in one line; the host's socket still answers."""
    import socket
    etc = tmp_path / "etc"
    etc.mkdir()
    host = socket.socket(socket.AF_UNIX)
    host.bind(str(etc / "daemon.sock"))
    host.listen(1)
    try:
        code, err = _restore_with_etc(_mutated(image_dir, tmp_path, _on_external("daemon.sock")), str(etc), tmp_path)
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(5)
        c.connect(str(etc / "daemon.sock"))
        host.settimeout(5)
        host.accept()[0].close()   # (it reached the host's listener, not the tree's)
        c.close()
        assert code == 2 and re.search(r"daemon.sock.*a live socket", err), err
    finally:
        host.close()


def test_a_stale_socket_file_is_replaced(image_dir, tmp_path):
    """The same name holding a socket file nobody listens on (the dumped tree's, its listener
    gone): replaced by the restored listener, as before (the check above refuses live ones only)."""
    import socket
    etc = tmp_path / "etc"
    etc.mkdir()
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(etc / "daemon.sock"))
    old.close()
    code, err = _restore_with_etc(_mutated(image_dir, tmp_path, _on_external("daemon.sock")), str(etc), tmp_path)
    assert code == 0, err


def test_timers_are_bounded_in_all(image_dir, monkeypatch):
    """Each process may have 65536 POSIX timers, and an image has up to 100,000 processes: each
    timer restore makes is kernel memory of the host's (the stand-in raises its RLIMIT_SIGPENDING
    as the image says before it makes them). The count over all processes is bounded (here lowered
    to the image's one timer less one); before, only a process's was."""
    from engine import imageformat, posixtimers
    from engine.image import ImageError
    doc = load_manifest(image_dir)
    imageformat.validate(doc)
    monkeypatch.setattr(posixtimers, "MAX_ALL", 0)
    with pytest.raises(ImageError, match=r"1 POSIX timers is absurd \(at most 0 in all\)"):
        imageformat.validate(doc)


def test_a_tree_past_the_timers_in_all_is_refused_before_the_stop(case, monkeypatch):
    """Dump counts the tree's timers before the stop (posixtimers.check) the same way."""
    from engine import posixtimers
    pid = case.start(enginecase.py_hold(_BODY.replace('open("/proc/sys/net/unix/max_dgram_qlen", "w").write("77")', "")))
    assert posixtimers.parse(pid), "the tree's root holds the timer (the setup execs it)"
    posixtimers.check([pid])
    monkeypatch.setattr(posixtimers, "MAX_ALL", 0)
    with pytest.raises(posixtimers.TimerError, match=r"more than 0 POSIX timers"):
        posixtimers.check([pid])


# --- an mqueue superblock's root owner and mode ---------------------------------------------------

def test_an_mqueue_root_of_the_restorers_own_ipc_namespace_is_not_chowned(image_dir, tmp_path):
    """The tree's process said to be in the host's ipc namespace (host_ns ipc): its mqueue mount
    would be the restorer's own namespace's, whose root owner and mode (the payload, 5:6 1730
    here) restore would give the host's queues. Refused in one line (it was: the check at the
    point of use holds); the host's queues as they were."""
    def mutate(d):
        _hold(d)["host_ns"].append("ipc")
        assert any(sb.get("payload", {}).get("root") for sb in d["superblocks"].values() if sb["fstype"] == "mqueue")
    refused(_mutated(image_dir, tmp_path, mutate), r"mqueue.*restorer's own ipc namespace", tmp_path)


# --- a filtered parent trapped once before the stop ------------------------------------------------

def test_a_filtered_parent_is_trapped_once_before_the_stop(monkeypatch):
    """engine/prestop.py reads a filtered process's seccomp filters (a seize and an interrupt) for
    the stand-in check, and the subreaper check of a parent asks the same filters: it takes those
    (`precheck_filters`' answer) instead of trapping the parent a second time; a refusal still
    comes (the filter kills the call), and the process runs on."""
    import subprocess
    import sys
    from engine import seccomp, subreaper
    from test_engine_subreaper import filtered_child
    code = filtered_child(0x80000000)
    p = subprocess.Popen([sys.executable, "-c", code, "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            pids = [p.pid, *(int(c) for c in f.read().split())]
        seized = []
        real = seccomp.read
        monkeypatch.setattr(seccomp, "read", lambda pid: seized.append(pid) or real(pid))
        got = seccomp.precheck_filters(pids)
        assert got[p.pid] and seized.count(p.pid) == 1, (got, seized)
        with pytest.raises(subreaper.SubreaperError, match="seccomp filters"):
            subreaper.precheck(pids, got)
        assert seized.count(p.pid) == 1, seized
        out, _ = p.communicate(b"alive", timeout=60)
        assert out == b"alive\n" and p.returncode == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_socket_files_mode_is_given_to_no_other_file_of_the_host(image_dir, tmp_path):
    """A listener bound to a relative name whose socket file the image says is a regular file of an
    external directory (the host's shadow), with a socket mode of 0777: the bind into that
    directory finds the name taken, so restore never reaches the chmod of the socket file it made.
    Refused in one line; the file keeps its mode (it did: a name with '.' components, bound as it
    reads elsewhere and then chmodded here, is refused by the validator)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "shadow").write_text("root:secret\n")
    os.chmod(etc / "shadow", 0o640)

    def mutate(d):
        _on_external("shadow", "shadow")(d)   # (relative: bound where the stand-in is, its cwd)
        _listener(d)["mode"] = 0o777
    code, err = _restore_with_etc(_mutated(image_dir, tmp_path, mutate), str(etc), tmp_path)
    assert oct(os.stat(etc / "shadow").st_mode & 0o7777) == "0o640", err
    assert code == 2 and re.search(r"another file has that name .*Address already in use; remove that file", err), err


def test_a_process_past_the_timers_bound_is_refused_before_the_stop(case):
    """A process with 65537 POSIX timers (its RLIMIT_SIGPENDING raised): /proc/PID/timers is read
    whole, the dump refused before the stop in one line naming the bound, the tree runs on."""
    if not inject.SUPPORTED:
        pytest.skip("timers are read by calls made in the process: engine/inject.py runs them on x86_64 only")
    import resource
    if resource.getrlimit(resource.RLIMIT_SIGPENDING)[1] < 65600:
        pytest.skip("RLIMIT_SIGPENDING's hard limit here is below 65537 timers")
    body = _CHURN_LIB + """
import resource
hard = resource.getrlimit(resource.RLIMIT_SIGPENDING)[1]
resource.setrlimit(resource.RLIMIT_SIGPENDING, (hard, hard))
sev = ctypes.create_string_buffer(struct.pack("=Qiii", 0, 0, 1, 0).ljust(64, b"\\0"), 64)
t = ctypes.c_int()
for _ in range(65537):
    assert libc.timer_create(1, sev, ctypes.byref(t)) == 0, ctypes.get_errno()
"""
    pid = case.start(enginecase.STOP_WATCH + enginecase.py_hold(body))
    with pytest.raises(enginecase.CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert re.search(r"has 65537 POSIX timers \(at most 65536", str(err.value)), str(err.value)
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"


@pytest.mark.parametrize("name", ["ipv4/conf/{dev}/forwarding", "ipv4/conf/{dev}/../all/forwarding",
                                  "ipv4/conf/{dev}/.../forwarding", "ipv4/conf/{dev}%2f../forwarding"])
def test_netvars_never_reach_a_device_of_the_hosts(image_dir, tmp_path, name):
    """A sysctl of one of the host's own devices (eth0, or whatever it has), spelled plainly or with
    '..' and its look-alikes: the namespace restore made has no such device, so the write fails
    in one line, or the validator refuses the name; the host's device keeps its value."""
    devs = sorted(set(os.listdir("/proc/sys/net/ipv4/conf")) - {"all", "default", "lo"})
    if not devs:
        pytest.skip("the host has no network device but lo")
    dev, name = devs[0], name.format(dev=devs[0])
    path = f"/proc/sys/net/ipv4/conf/{dev}/forwarding"
    with open(path) as f:
        before = f.read()

    def mutate(d):
        d["netvars"][_hold(d)["ns"]["net"]][name] = "0\n" if before.strip() == "1" else "1\n"
    refused(_mutated(image_dir, tmp_path, mutate), r"not a network sysctl|No such file or directory", tmp_path)
    with open(path) as f:
        assert f.read() == before


_FILLERS = """
import os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from engine import posixtimers
hard = resource.getrlimit(resource.RLIMIT_SIGPENDING)[1]
resource.setrlimit(resource.RLIMIT_SIGPENDING, (hard, hard))
posixtimers._restore_ids = lambda on: False   # (a kernel before 6.13: fillers)
t0 = time.monotonic()
try:
    posixtimers.make([{"id": int(sys.argv[2]), "clock": 1, "notify": "none", "value": 0, "interval": 0, "overrun": 0}], [0])
except OSError as e:
    print("refused", e.strerror, round(time.monotonic() - t0), flush=True)
print([line for line in open("/proc/self/timers") if line.startswith("ID:")], flush=True)
"""


def test_filler_timers_are_bounded_on_a_kernel_without_restored_ids():
    """Without PR_TIMER_CREATE_RESTORE_IDS a timer's id is reached by fillers made in order: an
    image timer of id 2^31-1 stops after 65536 of them (a failure naming it, not 2^31 timers of the
    host's kernel memory; the stand-in, which holds them, dies with the restore); a low id is made
    exactly, its fillers deleted (as they were: the loop is bounded)."""
    import resource
    import subprocess
    import sys
    from test_engine_reexec import ROOT
    if resource.getrlimit(resource.RLIMIT_SIGPENDING)[1] < 65600:
        pytest.skip("RLIMIT_SIGPENDING's hard limit here is below 65537 timers")
    r = subprocess.run([sys.executable, "-S", "-c", _FILLERS, ROOT, str((1 << 31) - 1)], capture_output=True, text=True,
                       timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].startswith("refused POSIX timer 2147483647: more than 65536 ids to skip"), r
    r = subprocess.run([sys.executable, "-S", "-c", _FILLERS, ROOT, "5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == r"['ID: 5\n']", r
