"""cgroup v1 hierarchies (engine/fs/cgroup.py): engine round trips, and the checks restore makes
before it mounts a hierarchy.

Every cgroup a test makes is a cgroup of this host (v1 hierarchies are global): each test removes
the ones it made when it is done, and a named hierarchy disappears with its last mount and cgroup.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

import enginecase
from enginecase import assert_same, case, take  # noqa: F401  (case: fixture)
from engine.fs import FsError, cgroup


def _v1(controller_or_name: str) -> bool:
    """Whether this host has the v1 hierarchy (a controller bound to one, or any named one)."""
    if controller_or_name.startswith("name="):
        return os.path.exists("/proc/cgroups")
    try:
        return cgroup.host_hierarchies().get(controller_or_name, 0) != 0
    except OSError:
        return False


def _rmdir_cgroups(opts: str, dirs: list[str]) -> None:
    """Remove cgroup directories a test made (deepest first), from a private mount namespace."""
    script = (f"mount -t cgroup -o {opts} cgroup /mnt && "
              + " ; ".join(f"rmdir /mnt/{d} 2>/dev/null" for d in sorted(dirs, key=len, reverse=True))
              + " ; umount /mnt")
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=False)


@pytest.fixture
def made_cgroups():
    """[(mount options, [cgroup dirs])] the test made: removed after everything else of the test
    (request it before `case`, whose trees must be gone first)."""
    made: list[tuple[str, list[str]]] = []
    yield made
    for opts, dirs in made:
        _rmdir_cgroups(opts, dirs)


def test_named_hierarchy_two_roots(made_cgroups, case):
    """A named hierarchy (`none,name=...`) mounted twice with different roots: its root, and a bind
    of a cgroup beneath it; both come back as mounts of one hierarchy with the same roots."""
    name = f"mntcr-test-{uuid.uuid4().hex[:8]}"
    made_cgroups.append((f"none,name={name}", ["a/b", "a"]))
    setup = f"""
mkdir -p /sys/fs/cgroup/named /mnt/sub
mount -t cgroup -o none,name={name} cgroup /sys/fs/cgroup/named
mkdir -p /sys/fs/cgroup/named/a/b
mount --bind /sys/fs/cgroup/named/a/b /mnt/sub
hold
"""
    before, after = case.roundtrip(setup, check="ls -d /mnt/sub/cgroup.procs /sys/fs/cgroup/named/a/b")
    mounts = [m for m in after.root.mounts if m.fstype == "cgroup"]
    assert sorted(m.root for m in mounts) == ["/", "/a/b"]
    assert all(f"name={name}" in m.super_opts for m in mounts)
    assert len({m.dev for m in mounts}) == 1, "one hierarchy, one superblock"
    assert "[exit" not in after.snap.check_output


def _cpu_opts() -> list[str]:
    """The super options of this host's hierarchy with the cpu controller (e.g. rw,cpu,cpuacct)."""
    bound = cgroup.host_hierarchies()
    return ["rw"] + sorted(c for c, h in bound.items() if h == bound["cpu"])


@pytest.mark.skipif(not _v1("cpu"), reason="this host has no cgroup v1 hierarchy with the cpu controller")
def test_controller_subdir_bind_recreated(made_cgroups, case):
    """A read-only bind of a cgroup of a controller hierarchy (how runc's v1 mode shows a container
    its cgroup): the cgroup is removed between dump and restore (a runtime does, with the
    container), and restore makes it again (empty) to mount it."""
    opts = ",".join(cgroup.controllers(_cpu_opts()))
    cg = f"mntcr-test-{uuid.uuid4().hex[:8]}"
    made_cgroups.append((opts, [cg]))
    setup = f"""
mkdir -p /run/cpu /sys/fs/cgroup/cpu
mount -t cgroup -o {opts} cgroup /run/cpu
mkdir /run/cpu/{cg}
mount --bind /run/cpu/{cg} /sys/fs/cgroup/cpu
mount -o remount,bind,ro,nosuid,nodev,noexec /sys/fs/cgroup/cpu
umount /run/cpu
hold
"""
    check = "ls /sys/fs/cgroup/cpu/cgroup.procs"
    pid = case.start(setup)
    before = take(pid, check)
    images = case.new_images_dir()
    case.dump(pid, images)
    _rmdir_cgroups(opts, [cg])
    pid = case.restore(images)
    after = take(pid, check)
    assert_same(before, after)
    mounts = [m for m in after.root.mounts if m.fstype == "cgroup"]
    assert [(m.mountpoint, m.root) for m in mounts] == [("/sys/fs/cgroup/cpu", f"/{cg}")]
    assert "ro" in mounts[0].mount_opts
    assert "[exit" not in after.snap.check_output


def test_options_given_back():
    """Controllers and flags are passed back; a hierarchy of none gets `none`; release_agent never."""
    t = cgroup.TYPE
    assert t.fsconfig_params(["rw", "cpu", "cpuacct"]) == [("cpu", None), ("cpuacct", None)]
    assert t.fsconfig_params(["rw", "xattr", "name=systemd"]) == [("none", None), ("xattr", None),
                                                                  ("name", "systemd")]
    assert t.fsconfig_params(["rw", "memory", "release_agent=/sbin/x", "clone_children"]) == \
        [("memory", None), ("clone_children", None)]
    assert cgroup.describe(["rw", "cpu", "cpuacct", "name=x"]) == "cpu,cpuacct,name=x"


@pytest.mark.parametrize("opts,message", [
    (["rw", "cpu"], "this host binds controllers cpu,cpuacct to its v1 hierarchy, not the set cpu"),
    (["rw", "cpu", "cpuacct", "memory"], "cpu,cpuacct,memory to its v1 hierarchies"),
    (["rw", "net_cls"], "controller net_cls on no v1 hierarchy here; restore does not make"),
    (["rw", "bogus"], "controller bogus unknown to this kernel"),
])
def test_refuses_hierarchy_the_host_lacks(opts, message):
    """Restore mounts only a hierarchy this host has with exactly the image's controllers: one line
    naming the mount and the controllers, never a new hierarchy that takes controllers."""
    bound = {"cpu": 1, "cpuacct": 1, "memory": 4, "net_cls": 0, "name": 0}
    with pytest.raises(FsError) as e:
        cgroup.check_bound(opts, bound, "mount 7 (/sys/fs/cgroup/cpu) on cgroup")
    assert message in str(e.value), str(e.value)
    assert str(e.value).startswith("[Errno") and "mount 7 (/sys/fs/cgroup/cpu) on cgroup: " in str(e.value)
    cgroup.check_bound(["rw", "cpu", "cpuacct"], bound, "m")   # the exact set passes
    cgroup.check_bound(["rw", "name=x"], bound, "m")            # a named hierarchy of none passes


def test_tree_that_inherited_the_hosts_mounts(case, tmp_path):
    """`unshare -m -p -f` on this host (a shell a user starts): every mount the host gave it (cgroup v1
    hierarchies, devtmpfs, its /dev/shm and /dev/pts, the root disk as --root) dumps and restores
    equal, with a tmpfs of its own. The host's /proc is replaced first: a proc of the host's pid
    namespace is refused (README)."""
    script = ("umount -l /proc && mount -t proc proc /proc && "
              "mount -t tmpfs own /mnt && echo mine > /mnt/f && "
              # stdio opened inside (a file opened in the parent namespace is another case: issue 14)
              "exec sleep 100000 </dev/null >/dev/null 2>&1")
    proc = subprocess.Popen(["unshare", "-m", "-p", "-f", "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = _sleeper_of(proc.pid)
        case.trees.append(pid)
        before = take(pid)
        images = str(tmp_path / "img")
        r = enginecase.mntcr("dump", "-t", str(pid), "-D", images)
        if r.returncode and "--external mnt[" in r.stderr:
            # (a host with more disks or other filesystems than this test's: what to declare is its own)
            pytest.skip(f"this host's mounts need declarations: {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr
        # (its own image: the host's devtmpfs in it is trusted, IMAGE.md --devices)
        r = enginecase.mntcr("restore", "-D", images, "--root", "/", "--devices", "all", "--pidfile", images + ".pid")
        assert r.returncode == 0, r.stderr
        with open(images + ".pid") as f:
            restored = int(f.read())
        case.trees.append(restored)
        after = take(restored)
        assert_same(before, after)
        types = {m.fstype for m in after.root.mounts}
        assert {"cgroup", "devtmpfs"} <= types if _v1("cpu") else "devtmpfs" in types
        with open(f"/proc/{restored}/root/mnt/f") as f:
            assert f.read() == "mine\n"
    finally:
        proc.kill()
        proc.wait()


def _sleeper_of(unshare_pid: int, tries: int = 400) -> int:
    """The `sleep` the unshared shell execs (the child of unshare's fork), once it is sleeping."""
    import time
    for _ in range(tries):
        try:
            with open(f"/proc/{unshare_pid}/task/{unshare_pid}/children") as f:
                kids = f.read().split()
            if kids:
                with open(f"/proc/{kids[0]}/comm") as f:
                    if f.read().strip() == "sleep":
                        return int(kids[0])
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("the unshared shell never reached its sleep")


def test_root_outside_the_dumpers_cgroup_namespace_refused_unstopped(made_cgroups, case):
    """A named hierarchy mounted by the tree, dumped by a dumper in a cgroup namespace made in a
    cgroup beneath the mounts' roots: mountinfo shows them as "/.." roots, which restore cannot make
    from its own namespace. Refused naming the mount, before the tree is stopped."""
    if not _v1("name=x"):
        pytest.skip("no cgroup v1 on this host (/proc/cgroups missing)")
    name = f"mntcr-test-{uuid.uuid4().hex[:8]}"
    made_cgroups.append((f"none,name={name}", ["a/b", "a"]))
    pid = case.start(enginecase.STOP_WATCH + f"mkdir -p /sys/fs/cgroup/named\n"
                     f"mount -t cgroup -o none,name={name} cgroup /sys/fs/cgroup/named\n"
                     "mkdir -p /sys/fs/cgroup/named/a/b\nhold\n")
    procs = f"/proc/{pid}/root/sys/fs/cgroup/named/a/b/cgroup.procs"
    images = case.new_images_dir()
    r = subprocess.run(["sh", "-c", f'echo $$ > {procs} && exec unshare -C "$@"', "sh", sys.executable, "-m",
                        "engine.cli", "dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS],
                       cwd=enginecase.ENGINE_ROOT, env=dict(os.environ, PYTHONPATH=enginecase.ENGINE_ROOT),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(r"mntcr dump: mount \d+ \(/sys/fs/cgroup/named\) on cgroup: its root /\.\./\.\. lies outside "
                        r"the dumper's cgroup namespace; dump from the host's cgroup namespace\n", r.stderr), r.stderr
    assert not os.path.exists(images)
    assert not enginecase.was_stopped(pid), "dump stopped the tree before it refused"
