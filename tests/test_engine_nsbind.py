"""A namespace bound on a file (nsfs: `ip netns add`, `unshare --uts=PATH`) is dumped and restored as a
bind of the restored namespace it names (engine/fs/nsfs.py): a namespace some process of the tree is
in, or a network namespace only the bind keeps alive, which restore makes afresh (lo up when it was).
What restore cannot make again is refused before the stop with a line that says whose namespace it
is and how to remove the bind: the host's (the dumper's own), a mount namespace, a lone namespace
of another kind or one that holds what a fresh one lacks. A hostile image may not name a namespace
it does not make itself."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from enginecase import case  # noqa: F401  (fixture)


def _need_ip():
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed")


def _refusal(case, setup: str) -> str:
    """Dump of the tree `setup` builds: its refusal, once the tree is seen running unstopped."""
    from enginecase import CRError, STOP_WATCH, was_stopped
    pid = case.start(STOP_WATCH + setup)
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir())
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    return str(err.value)


def _binds(pid: int) -> dict[str, str]:
    """Mount point -> root ("net:[N]") of every nsfs mount the process at `pid` sees."""
    from engine import mountinfo
    return {m.mountpoint: m.root for m in mountinfo.read_pid(pid) if m.fstype == "nsfs"}


def _ino(root: str) -> int:
    return int(re.match(r"^[a-z]+:\[(\d+)\]$", root).group(1))


# `ip netns add` alone: a network namespace no process of the tree is in (lo up, 127.0.0.1 then).
LONE = """
ip netns add blue
nsenter --net=/run/netns/blue ip link set lo up
hold
"""
CHECK_LONE = ("nsenter --net=/run/netns/blue ip -o addr show | sed 's/[[:space:]]\\+/ /g'; "
              "nsenter --net=/run/netns/blue ip -o link show lo | grep -o 'state [A-Z]*'")


def test_lone_netns_restored_afresh(case):
    """`ip netns add blue` with its lo up: dumped, restored as a new network namespace (not the host's,
    not the old one) whose lo is up with 127.0.0.1, bound at /run/netns/blue; the check compares."""
    from enginecase import take, assert_same
    import subprocess
    _need_ip()
    # (a policy routing rule, neither kept nor compared, marks the old namespace: its inode number may
    # be reused once it is gone)
    pid = case.start(LONE.replace("hold", "nsenter --net=/run/netns/blue ip rule add from 10.1.2.3 table 7\nhold"))
    before = take(pid, CHECK_LONE)
    assert "127.0.0.1/8" in before.snap.check_output, before.snap.check_output
    rules = ["nsenter", f"--net=/proc/{pid}/root/run/netns/blue", "ip", "rule", "show"]
    assert "10.1.2.3" in subprocess.run(rules, capture_output=True, text=True, check=True).stdout
    pid = case.cr(pid)
    after = take(pid, CHECK_LONE)
    assert_same(before, after)
    new = _ino(_binds(pid)["/run/netns/blue"])
    assert new != os.stat("/proc/self/ns/net").st_ino, new
    rules[1] = f"--net=/proc/{pid}/root/run/netns/blue"
    assert "10.1.2.3" not in subprocess.run(rules, capture_output=True, text=True, check=True).stdout


def test_lone_netns_lo_down_and_second_cr(case):
    """Its lo left down: restored down (no address); a second C/R of the restored tree works too."""
    _need_ip()
    states = case.roundtrip("ip netns add red\nhold\n", CHECK_LONE.replace("blue", "red"), iters=2)
    assert "127.0.0.1" not in states[0].snap.check_output and "DOWN" in states[0].snap.check_output


def test_process_netns_bound_names_the_restored_namespace(case):
    """A process of the tree in the bound namespace (`ip netns exec`): the restored bind is that
    process's restored network namespace."""
    from enginecase import HOLD, take, assert_same
    _need_ip()
    setup = f"""
ip netns add green
nsenter --net=/run/netns/green ip link set lo up
nsenter --net=/run/netns/green {HOLD} 100000 </dev/null >/dev/null 2>&1 &
until [ "$(readlink /proc/$!/ns/net)" = "net:[$(stat -L -c %i /run/netns/green)]" ]; do sleep 0.1; done
hold
"""
    pid = case.start(setup)
    before = take(pid, CHECK_LONE.replace("blue", "green"))
    pid = case.cr(pid)
    after = take(pid, CHECK_LONE.replace("blue", "green"))
    assert_same(before, after)
    root = _binds(pid)["/run/netns/green"]
    from zdtm.snapshot import tree_pids
    inside = [p for p in tree_pids(pid) if os.readlink(f"/proc/{p}/ns/net") == root]
    assert inside, f"no restored process is in the bound namespace {root}"
    assert _ino(root) != os.stat("/proc/self/ns/net").st_ino


def test_tree_uts_namespace_bound(case):
    """`unshare --uts=PATH` whose process stays in the tree: restored as a bind of its restored uts
    namespace (its hostname compared by the check)."""
    from enginecase import HOLD, take, assert_same
    setup = f"""
touch /run/uts
unshare --uts=/run/uts sh -c 'hostname inner; exec {HOLD} 100000' </dev/null >/dev/null 2>&1 &
until grep -q ' /run/uts ' /proc/self/mountinfo; do sleep 0.1; done
hold
"""
    check = "nsenter --uts=/run/uts hostname"
    pid = case.start(setup)
    before = take(pid, check)
    assert before.snap.check_output.strip() == "inner", before.snap.check_output
    pid = case.cr(pid)
    assert_same(before, take(pid, check))


def test_host_netns_bound_refused(case):
    """The container shares the host's network namespace: a bind of it is the dumper's own, refused."""
    msg = _refusal(case, "touch /run/hostnet\nmount --bind /proc/self/ns/net /run/hostnet\nhold\n")
    assert re.search(r"mount \d+ \(/run/hostnet\): the host's net namespace \(the dumper's own\) is bound on it "
                     r"\(nsfs\): restore binds only namespaces it makes; unmount it before dump \(umount "
                     r"/run/hostnet, in the tree's mount namespace\)", msg), msg


def test_lone_netns_with_an_address_refused(case):
    """A lone network namespace holding an address a fresh one lacks: refused before the stop."""
    _need_ip()
    ns = "nsenter --net=/run/netns/blue"
    msg = _refusal(case, f"ip netns add blue\n{ns} ip link set lo up\n{ns} ip addr add 10.9.8.7/24 dev lo\nhold\n")
    assert re.search(r"mount \d+ \(/run/netns/blue\): a network namespace only the bind keeps .*addresses differ .*"
                     r"10\.9\.8\.7/24.*\(ip netns delete blue, in the tree's mount namespace\)", msg), msg


def test_lone_uts_namespace_refused(case):
    """A uts namespace no process is in any more (only the bind keeps it): refused, saying so."""
    msg = _refusal(case, "touch /run/uts\nunshare --uts=/run/uts true\nhold\n")
    assert re.search(r"mount \d+ \(/run/uts\): a uts namespace no process of the tree is in is bound on it .*"
                     r"unmount it before dump \(umount /run/uts", msg), msg


def test_mount_namespace_bound_refused(case):
    """A mount namespace no process of the tree is in, bound on a file: refused with its own line."""
    msg = _refusal(case, "mkdir /run/m; mount --bind /run/m /run/m; mount --make-private /run/m\n"
                         "touch /run/m/mnt\n"
                         # Bound by hand, on each CPU in turn: the kernel refuses (EINVAL) to bind a
                         # mount namespace whose id is not above the binder's (mnt_ns_loop), and on
                         # this 6.18 kernel a newer namespace made on another CPU can have a lower id
                         # (`unshare --mount=FILE` failed five times in a row once in CI).
                         "for c in $(seq 0 $(($(nproc) - 1))) 0; do\n"
                         "  taskset -c $c unshare -m sleep 1000 & p=$!\n"
                         "  while [ \"$(readlink /proc/$p/ns/mnt)\" = \"$(readlink /proc/self/ns/mnt)\" ]; do sleep 0.02; done\n"
                         "  ok=; mount --bind /proc/$p/ns/mnt /run/m/mnt 2>/dev/null && ok=1\n"
                         "  kill $p; wait $p 2>/dev/null || true\n"
                         "  [ -n \"$ok\" ] && break\n"
                         "done\n"
                         "grep -q ' /run/m/mnt ' /proc/self/mountinfo || { echo 'setup: no namespace bound on /run/m/mnt' >&2; exit 1; }\n"
                         "hold\n")
    assert re.search(r"mount \d+ \(/run/m/mnt\): a mount namespace no process of the tree is in is bound on it "
                     r"\(nsfs\): mntcr restores only binds of the tree's mount namespaces; unmount it before dump", msg), msg


# A hostile image may not make restore bind a namespace it does not make itself (the restorer's own,
# the host's): the mqueue of a real image (whose tree shares the host's network namespace: its
# processes' net-0 is the host's) turned into a namespace bind.
def _nsfs(**fields):
    def mutate(d):
        from test_hardening_review import _mnt, _turn_mqueue
        _turn_mqueue(d, "nsfs", source="nsfs", super_opts=["rw"])
        m = _mnt(d, "/mnt/mq")
        m["root"] = fields.pop("root", "/")
        if "lone_ns" in fields:
            d["superblocks"][m["sb"]]["lone_ns"] = fields.pop("lone_ns")
        for key in ("netvars", "net_lo_up"):
            if key in fields:
                d[key] = fields.pop(key)
        m.update(fields)
    return mutate


def _own_userns_declared(d):
    """A bind of user-0, the id of the user namespace restore runs in, which the image also declares
    as one restore makes: restore bound its own (engine/fs/nsfs.py OWN_USERNS), not the declared one."""
    _nsfs(bound_ns="user-0")(d)
    d["userns"] = {"user-0": {"uid_map": [[0, 100000, 65536]], "gid_map": [[0, 100000, 65536]], "setgroups": "allow"}}


def _tmpfs_binding(d):
    from test_hardening_review import _mnt
    _mnt(d, "/mnt/t")["bound_ns"] = "net-1"


HOSTILE = {
    "the host's namespace": (_nsfs(bound_ns="net-0"), r"mount \d+ \(/mnt/mq\): binds namespace net-0, which the "
                                                      r"image does not make"),
    "no such namespace": (_nsfs(bound_ns="net-7"), r"binds namespace net-7, which the image does not make"),
    "no such user namespace": (_nsfs(bound_ns="user-3"), r"binds namespace user-3, which the image does not make"),
    "none named": (_nsfs(), r"mount \d+ \(/mnt/mq\): a nsfs mount names no namespace it binds"),
    "a mount namespace in itself": (_nsfs(bound_ns="mnt-0"), r"mount \d+ \(/mnt/mq\): binds mnt-0, the mount namespace "
                                                             r"it is in \(a loop the kernel refuses\)"),
    "a pid namespace as a mount namespace": (_nsfs(bound_ns="mnt-pid-0"), r"'bound_ns' must be a namespace id like "
                                                                           r"net-1 \(got 'mnt-pid-0'\)"),
    "a root of an inode": (_nsfs(bound_ns="net-1", lone_ns=["net-1"], root="net:[4026531840]"),
                           r"mount \d+: root 'net:\[4026531840\]' is no path; only an external mount may have that"),
    "a lone namespace named as the processes'": (_nsfs(bound_ns="net-0", lone_ns=["net-0"]),
                                                 r"lone namespace 'net-0' is no net-N apart from the processes' ones"),
    "a lone namespace twice": (_nsfs(bound_ns="net-1", lone_ns=["net-1", "net-1"]),
                               r"lone namespace 'net-1' is no net-N apart from the processes' ones and the other"),
    "a lone namespace of an odd id": (_nsfs(bound_ns="net-1", lone_ns=["../x"]),
                                      r"lone_ns.*must be a network namespace id net-N"),
    "a lone namespace of the old record": (_nsfs(bound_ns="net-1", lone_ns={"net-1": {"lo": "up"}}),
                                           r"lone_ns.*must be"),
    "a lone namespace's odd sysctl": (_nsfs(bound_ns="net-1", lone_ns=["net-1"], netvars={"net-1": {"../x": "1"}}),
                                      r"netvars net-1: '\.\./x' is not a network sysctl"),
    "the sysctls of the host's namespace": (_nsfs(bound_ns="net-1", lone_ns=["net-1"],
                                                  netvars={"net-0": {"ipv6/conf/all/disable_ipv6": "1\n"}}),
                                            r"netvars for 'net-0': not a network namespace restore makes"),
    "the host's lo": (_nsfs(bound_ns="net-1", lone_ns=["net-1"], net_lo_up=["net-1", "net-0"]),
                      r"net_lo_up: network namespaces restore makes, each once"),
    "a lone namespace no mount binds": (_nsfs(bound_ns="net-1", lone_ns=["net-1", "net-2"]),
                                        r"lone namespace net-2, which none of its mounts binds"),
    "the restorer's user namespace declared": (_own_userns_declared, r"mount \d+ \(/mnt/mq\): binds user-0, the id "
                                                                     r"of the user namespace restore runs in, which the "
                                                                     r"image also declares"),
    "a tmpfs binding a namespace": (_tmpfs_binding, r"only a mount of a type that binds namespaces \(nsfs\) names one"),
}


@pytest.fixture(scope="module")
def base_image(tmp_path_factory):
    """An image of test_hardening_review's tree (an mqueue at /mnt/mq to turn into another type)."""
    import enginecase
    from test_hardening_review import SETUP
    yield from enginecase.dumped_image(tmp_path_factory, SETUP, "hostile image tests need root")


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_namespace_bind_refused(base_image, tmp_path, kind):
    """Refused before anything is made, one line, nothing touched (test_hardening_hostile.refused)."""
    from test_hardening_hostile import _mutated, refused
    mutate, pattern = HOSTILE[kind]
    refused(_mutated(base_image, tmp_path, mutate), r"bad image: .*" + pattern, tmp_path)



def test_bind_propagates_to_a_peer_namespace(case):
    """`ip netns add` makes /run/netns a shared mount: a second mount namespace of the tree copied after
    (unshare -m, propagation unchanged) holds a peer of it, and a namespace bound there later propagates
    into it. Both binds, peers, restored as such, naming the same new network namespace."""
    from enginecase import HOLD, take, assert_same
    from zdtm.snapshot import tree_pids
    _need_ip()
    setup = f"""
ip netns add blue
unshare -m --propagation unchanged {HOLD} 100000 </dev/null >/dev/null 2>&1 &
until [ "$(readlink /proc/$!/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ]; do sleep 0.1; done
ip netns add red
until grep -q ' /run/netns/red ' /proc/$!/mountinfo; do sleep 0.1; done
hold
"""
    pid = case.start(setup)
    before = take(pid)
    assert "/run/netns/red" in before.snap.cross_peers, before.snap.cross_peers
    pid = case.cr(pid)
    assert_same(before, take(pid))
    roots = {_binds(p)["/run/netns/red"] for p in tree_pids(pid)}
    assert len(roots) == 1 and roots != {os.readlink("/proc/self/ns/net")}, roots


def test_lone_netns_ipv6_off_restored(case):
    """IPv6 turned off in a lone network namespace before its lo came up (as docker does in a
    container's): restored off, lo up with 127.0.0.1 alone."""
    _need_ip()
    ns = "nsenter --net=/run/netns/blue"
    setup = (f"ip netns add blue\n{ns} sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
             f"echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'\n{ns} ip link set lo up\nhold\n")
    check = CHECK_LONE + f"; {ns} cat /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/lo/disable_ipv6"
    states = case.roundtrip(setup, check)
    out = states[0].snap.check_output
    assert "127.0.0.1/8" in out and "::1" not in out and out.rstrip().endswith("1\n1"), out


def test_lone_netns_sysctls_restored(case):
    """A lone network namespace's own sysctls, as a process's namespace's (engine/netvars.py): restored
    (before, only its IPv6 switches were kept)."""
    _need_ip()
    ns = "nsenter --net=/run/netns/blue"
    setup = (f"ip netns add blue\n{ns} sh -c 'echo 77 > /proc/sys/net/unix/max_dgram_qlen; "
             f"echo \"0 4242\" > /proc/sys/net/ipv4/ping_group_range'\nhold\n")
    check = f"{ns} cat /proc/sys/net/unix/max_dgram_qlen /proc/sys/net/ipv4/ping_group_range"
    states = case.roundtrip(setup, check)
    assert states[0].snap.check_output.split() == ["77", "0", "4242"], states[0].snap.check_output


def test_tree_pid_ipc_cgroup_namespaces_bound(case):
    """The other kinds a process of the tree is in, bound as `unshare --ipc=PATH --cgroup=PATH` makes
    them, and the container's pid namespace bound by hand: each restored bind is its process's
    restored namespace (the snapshot names the namespace a bind's root names by the first process
    in it)."""
    from enginecase import HOLD, take, assert_same
    from zdtm.snapshot import tree_pids
    setup = f"""
touch /run/pid /run/ipc /run/cg
mount --bind /proc/self/ns/pid /run/pid
unshare --ipc=/run/ipc --cgroup=/run/cg {HOLD} 100000 </dev/null >/dev/null 2>&1 &
until grep -q ' /run/cg ' /proc/self/mountinfo; do sleep 0.1; done
hold
"""
    pid = case.start(setup)
    before = take(pid)
    text = "\n".join(p.tree_text for p in before.snap.procs)
    for kind in ("pid", "ipc", "cgroup"):
        assert re.search(rf"root={kind}:\[P\d+\]", text), text
    pid = case.cr(pid)
    assert_same(before, take(pid))
    binds = _binds(pid)
    for kind, path in (("pid", "/run/pid"), ("ipc", "/run/ipc"), ("cgroup", "/run/cg")):
        assert any(os.readlink(f"/proc/{p}/ns/{kind}") == binds[path] for p in tree_pids(pid)), (kind, binds)


def test_lone_time_namespace_bound_refused(case):
    """A time namespace no process is in, bound on a file (`unshare --time=PATH` of a command that
    ended): refused before the stop, saying how to remove the bind."""
    msg = _refusal(case, "touch /run/u\nunshare --time=/run/u true\nhold\n")
    assert re.search(r"mount \d+ \(/run/u\): a time namespace no process of the tree is in is bound on it \(nsfs: "
                     r"one only the bind keeps alive\): mntcr makes only such network namespaces again; unmount it "
                     r"before dump \(umount /run/u, in the tree's mount namespace\)", msg), msg


def test_time_namespace_bind_restored(case):
    """`unshare --time=PATH --monotonic N`, then `nsenter --time=PATH` of a process: the time namespace
    bound on a file is bound again to the restored namespace, which has the process and its offset."""
    from enginecase import HOLD, take, assert_same
    from zdtm.snapshot import tree_pids
    setup = f"""
touch /run/t
unshare --time=/run/t --monotonic 5000 true
nsenter --time=/run/t {HOLD} 100000 </dev/null >/dev/null 2>&1 &
until [ "$(stat -L -c %i /proc/$!/ns/time)" = "$(stat -L -c %i /run/t)" ]; do sleep 0.05; done
hold
"""
    pid = case.start(setup)
    before = take(pid)
    pid = case.cr(pid)
    assert_same(before, take(pid))
    bound = _binds(pid)["/run/t"]
    inside = [p for p in tree_pids(pid) if os.readlink(f"/proc/{p}/ns/time") == bound]
    assert inside, (bound, tree_pids(pid))
    with open(f"/proc/{inside[0]}/timens_offsets") as f:
        assert re.search(r"^monotonic\s+5000\s", f.read(), re.M)


USERNS_SETUP = """
mkdir -p /run/u; mount -t tmpfs u /run/u; touch /run/u/net
unshare -U -r -m {net} --propagation private sh -c '{bind} && exec {hold} 100000' </dev/null >/dev/null 2>&1 &
until [ "$(readlink /proc/$!/ns/user)" != "$(readlink /proc/self/ns/user)" ] && grep -q nsfs /proc/$!/mountinfo; do
  sleep 0.1; done
hold
"""


def test_bind_in_a_user_namespace(case):
    """A process in a user namespace of its own binds its network namespace (owned by that user
    namespace) in its mount namespace (owned by it too): restored as that process's restored one."""
    from enginecase import HOLD
    case.roundtrip(USERNS_SETUP.format(net="-n", bind="mount --bind /proc/self/ns/net /run/u/net", hold=HOLD))


def test_lone_netns_of_a_user_namespace_refused(case):
    """A network namespace no process is in, owned by a user namespace of the tree: refused before the
    stop (restore makes lone network namespaces as its own only)."""
    from enginecase import HOLD
    msg = _refusal(case, USERNS_SETUP.format(net="", bind="unshare --net=/run/u/net true", hold=HOLD))
    assert re.search(r"mount \d+ \(/run/u/net\): the network namespace bound on it: a user namespace of the tree owns "
                     r"it, and no process of the tree is in it .*; unmount it before dump \(umount /run/u/net",
                     msg), msg


def test_external_bind_stands_for_its_namespace_only(case):
    """One bind declared --external (the old way round) and another left to mntcr: the external stands
    for binds of its own namespace only, so the other is refused before the stop, not bound from the
    external's host path."""
    from enginecase import CRError, STOP_WATCH, was_stopped
    _need_ip()
    pid = case.start(STOP_WATCH + "ip netns add blue\nip netns add red\nhold\n")
    with pytest.raises(CRError) as err:
        case.dump(pid, case.new_images_dir(), ("--external", "mnt[/run/netns/blue]:blue"))
    assert re.search(r"mount \d+ \(/run/netns/red\) on nsfs: its files lie outside every external mount of the same "
                     r"filesystem; declare it too with --external", str(err.value)), err.value
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_user_namespace_binds_restored(case):
    """User namespaces bound on files: the one the tree runs in (`flatpak run` as root binds it on the
    sandbox's /run/.userns) and a user namespace of the tree (`unshare -U` bound from its parent):
    each bound again, the first to the restorer's own, the second to the restored namespace."""
    from enginecase import HOLD, take, assert_same
    from zdtm.snapshot import tree_pids
    setup = f"""
touch /run/own /run/child
mount --bind /proc/self/ns/user /run/own
unshare -U -r {HOLD} 100000 </dev/null >/dev/null 2>&1 &
until [ "$(readlink /proc/$!/ns/user)" != "$(readlink /proc/self/ns/user)" ]; do sleep 0.05; done
mount --bind /proc/$!/ns/user /run/child
hold
"""
    pid = case.start(setup)
    before = take(pid)
    pid = case.cr(pid)
    assert_same(before, take(pid))
    binds = _binds(pid)
    assert binds["/run/own"] == os.readlink("/proc/self/ns/user"), binds
    assert binds["/run/child"] != binds["/run/own"], binds
    assert any(os.readlink(f"/proc/{p}/ns/user") == binds["/run/child"] for p in tree_pids(pid)), binds


@pytest.mark.parametrize("chain", [["mnt-0", "mnt-1"], ["mnt-0", "mnt-1", "mnt-2"], ["mnt-1", "mnt-2", "mnt-3"]])
def test_a_cycle_of_bound_mount_namespaces_is_refused(chain):
    """Each mount namespace of `chain` binds the next, the last the first: no kernel makes that (a
    namespace binds only older ones), and restore, which makes a bound namespace after its binder's,
    would have failed midway. One that binds a chain without a way back is fine."""
    from engine.imageformat import ImageError, _check_mntns_bind_cycles
    ids = ["mnt-0", "mnt-1", "mnt-2", "mnt-3"]
    doc = {"mntns": {n: {"mounts": [{"id": 1, "mountpoint": "/"}]} for n in ids}}
    for a, b in zip(chain[:-1], chain[1:]):
        doc["mntns"][a]["mounts"].append({"bound_ns": b})
    _check_mntns_bind_cycles(doc)   # (a chain)
    doc["mntns"]["mnt-0"]["mounts"].append({"bound_ns": "mnt-3"})   # (another way in, not back)
    _check_mntns_bind_cycles(doc)
    doc["mntns"][chain[-1]]["mounts"].append({"bound_ns": chain[0]})
    with pytest.raises(ImageError, match=r"bad image: mount namespace mnt-\d: its mounts bind, through other mount "
                                         r"namespaces, mnt-\d itself \(a cycle of bound mount namespaces"):
        _check_mntns_bind_cycles(doc)
