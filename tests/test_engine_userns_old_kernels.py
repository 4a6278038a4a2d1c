"""User namespaces on older kernels: without mount_setattr (< 5.12, strategy flags=remount) locks
are probed, and locked flags made, with mount(2) remounts (engine/remount.py); without
MOVE_MOUNT_SET_GROUP (< 5.15, sharing=construct) a subtree of locked mounts below an unlocked one
is made with it (engine/construct.py, op "member").

The host kernel has mount_setattr, so these tests take it away (seccomp: ENOSYS, as a 5.10 kernel
answers) from the engine's processes, with the strategy forced to what such a kernel chooses; what
they compare against is probed by this process, with mount_setattr.
"""

import os
import subprocess

import pytest

import enginecase
from enginecase import case, mntcr  # noqa: F401
from engine import construct, forkrun, mntlocks, mountinfo, strategy, topology

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="making user namespaces with any map needs root"),
              enginecase.needs_seccomp]

OLD = "flags=remount,sources=yard"
OLDEST = "sharing=construct,flags=remount,sources=yard,ids=mountinfo"   # what a 5.10 kernel chooses

# Inherited mounts (locked in the user namespace, with their flags), one the user namespace mounts
# itself (ro, not locked), a bind of a locked ro mount made inside (unlocked, its flags locked),
# and a recursive bind of a noatime tree (unlocked, the copy below it locked) given one more flag.
SETUP = """
mkdir -p /mnt/ro /mnt/na /mnt/own /mnt/bind /mnt/rbind /run/sync
mount -t tmpfs -o ro,nosuid,nodev lro /mnt/ro
mount -t tmpfs -o noatime,noexec lna /mnt/na
mkdir /mnt/na/sub
mount -t tmpfs -o nodev sub /mnt/na/sub
unshare -U -r -m --propagation unchanged sh -c '
  mount -t tmpfs -o ro own /mnt/own
  mount --bind /mnt/ro /mnt/bind
  mount --rbind /mnt/na /mnt/rbind
  mount -o remount,bind,noatime,noexec,nosuid /mnt/rbind
  touch /run/sync/ok
  exec /.hold/mntcr-hold infinity' </dev/null >/dev/null 2>&1 &
wait_for /run/sync/ok
hold
"""


def _probe_without_setattr(pid: int, mounts, canon_text: str):
    enginecase.without_syscalls("mount_setattr")()
    return mntlocks.probe(pid, mounts, canon_text)


def test_lock_probe_by_remount_agrees_with_mount_setattr(tmp_path, monkeypatch):
    d = tmp_path / "t"
    d.mkdir()
    inner = (f"mount -t tmpfs -o ro own {d}/own && mount --bind {d}/ro {d}/bind && "
             "echo ready && exec sleep 1000")
    script = (f"mount -t tmpfs -o mode=755 base {d} && mkdir {d}/ro {d}/na {d}/own {d}/bind && "
              f"mount -t tmpfs -o ro,nosuid,nodev lro {d}/ro && mount -t tmpfs -o noatime,noexec lna {d}/na && "
              f"exec unshare -U -r -m --propagation unchanged sh -c '{inner}'")
    p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        mounts = mountinfo.read_pid(p.pid)
        canon = topology.canonical(mounts)
        label = {m.mountpoint: canon.label(m.mnt_id) for m in mounts}
        monkeypatch.setenv(strategy.ENV, "")
        strategy.reset()
        fast = mntlocks.probe(p.pid, mounts, canon.text)
        monkeypatch.setenv(strategy.ENV, "flags=remount")
        strategy.reset()
        slow = forkrun.run(_probe_without_setattr, p.pid, mounts, canon.text)
        assert isinstance(slow, dict), slow
        assert slow == fast
        assert slow[label[f"{d}/ro"]] == "locked flags=ro,nosuid,nodev,atime"
        assert slow[label[f"{d}/na"]] == "locked flags=noexec,atime"
        assert slow[label[f"{d}/own"]] == "unlocked"
        assert slow[label[f"{d}/bind"]] == "unlocked flags=ro,nosuid,nodev,atime"
    finally:
        strategy.reset()
        p.kill()
        p.wait()
        p.stdout.close()


@pytest.mark.parametrize("forced", [OLD, OLDEST])
def test_rootless_tree_round_trips_without_mount_setattr(case, forced):
    """Locked mounts and flags, an unlocked bind with locked flags and a locked subtree below an
    unlocked recursive bind come back the same by an engine for which mount_setattr fails (also with
    peer groups built while mounting and no unique mount ids, as on 5.10). Once: the restored tree
    inherits the test's seccomp filter, and a dumper under a filter may not read one (EACCES)."""
    pid = case.start(SETUP)
    before = enginecase.take(pid)
    locks = "\n".join(line for p in before.snap.procs for line in p.lock_lines())
    assert "flags=ro,nosuid,nodev,atime" in locks and "locked flags=nodev,atime" in locks, locks
    for _ in range(1):
        images = case.new_images_dir()
        env = {strategy.ENV: forced}
        r = mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS, env=env,
                  without=("mount_setattr",))
        assert r.returncode == 0, r.stderr
        pidfile = images + ".pid"
        r = mntcr("restore", "-D", images, *enginecase.RESTORE_EXTERNALS, "--devices", "all", "--pidfile", pidfile,
                  env=env, without=("mount_setattr",))
        assert r.returncode == 0, r.stderr
        with open(pidfile) as f:
            pid = int(f.read())
        case.trees.append(pid)
        after = enginecase.take(pid)
        # The stand-ins inherit the filter `without` put on the restore (a process cannot drop a
        # seccomp filter): one filter more than before, which is this test's, not the engine's.
        for p in after.snap.procs:
            assert "seccomp=2 seccomp_filters=1" in p.bits, p.bits
            p.bits = p.bits.replace("seccomp=2 seccomp_filters=1", "seccomp=0 seccomp_filters=0")
        enginecase.assert_same(before, after)


def M(id, parent, mp, root="/", sb="a", shared=None, master=None):
    return dict(id=id, parent=parent, mountpoint=mp, root=root, sb=sb, shared=shared, master=master)


# A user namespace's copy locks 1-4; inside it, /mnt is bound recursively to /view (5 unlocked, its
# copies 6 and 7 locked below it), and a tmpfs of its own is mounted below them (8).
LOCKED_BELOW = [M(1, None, "/", sb="root"), M(2, 1, "/mnt", sb="m"), M(3, 2, "/mnt/ro", sb="r"),
                M(4, 3, "/mnt/ro/deep", sb="d"), M(5, 1, "/view", sb="m"), M(6, 5, "/view/ro", sb="r"),
                M(7, 6, "/view/ro/deep", sb="d"), M(8, 7, "/view/ro/deep/own", sb="o")]
COPIES = {"ns": ({1, 2, 3, 4}, {5, 6, 7, 8})}


def test_construct_makes_a_locked_subtree_with_its_unlocked_top():
    ops = construct.plan(LOCKED_BELOW, userns_copies=COPIES, subtrees={5: [6, 7]})
    assert [op[1] for op in ops if op[0] == "make"] == [1, 2, 3, 4, 5, 8]
    i = ops.index(("attach", 5, []))
    assert ops[i + 1:i + 3] == [("member", 6, None), ("member", 7, None)]
    assert ops.index(("userns", "ns")) < ops.index(("make", 5, None))
    assert ops.index(("member", 7, None)) < ops.index(("make", 8, None))


def test_construct_refuses_a_locked_subtree_member_that_joins_a_group():
    """The copy that locks a member makes it at best a slave of its group (then shared: a group of its
    own), never a peer of a mount made before it."""
    tree = [dict(m, shared=9) if m["id"] in (3, 6) else m for m in LOCKED_BELOW]
    with pytest.raises(construct.PlanError, match=r"^mount 6 \(/view/ro\): in a subtree of locked mounts below the "
                                                  r"unlocked mount 5 \(/view\), a peer of mounts made before it: .*"
                                                  r"Linux >= 5.15"):
        construct.plan(tree, userns_copies=COPIES, subtrees={5: [6, 7]})


def test_construct_makes_sharing_in_a_locked_subtree():
    """lxc_shared[unprivileged]: an rshared rbind, inside the container's user namespace, of a shared host
    mount with a mount in it: the top (unlocked) and its locked member are each shared and a slave of the
    host's group. Each is copied into the user namespace from a slave of its master group (a seed bound
    from the host's member and made slave, before the top's clone, which makes the members), and is
    made shared by the attach under the container's shared root."""
    tree = [M(1, None, "/", sb="root"), M(46, 1, "/run/shared", sb="s", shared=1),
            M(48, 46, "/run/shared/early", sb="e", shared=3),
            M(73, None, "/", sb="root", shared=6), M(81, 73, "/shared", sb="s", shared=4, master=1),
            M(82, 81, "/shared/early", sb="e", shared=5, master=3)]
    ops = construct.plan(tree, helper_ok=lambda sb: sb != "root", userns_copies={"ct": ({73}, {81, 82})},
                         subtrees={81: [82]})
    make81 = ops.index(next(op for op in ops if op[:2] == ("make", 81)))
    member = next(op for op in ops if op[:2] == ("member", 82))
    for src in (ops[make81][2], member[2]):
        kind, seed, _ = src
        assert kind == "node" and seed < 0 and ops.index(("prop", seed, "slave")) < make81, ops
    assert ops.index(next(op for op in ops if op[:2] == ("make", 48))) < make81   # (else a copy at /shared/early)
    assert not any(op[0] == "prop" and op[1] in (81, 82) for op in ops), ops   # shared by the attach


def test_construct_starts_again_a_group_that_died_with_the_copied_namespace():
    # An unprivileged LXC root: locked, shared, no master (the group it was copied from is gone).
    tree = [M(1, None, "/", sb="r", shared=7), M(2, 1, "/vol", sb="v")]
    ops = construct.plan(tree, userns_copies={"ns": ({1}, {2})})
    after = ops[ops.index(("userns", "ns")):]
    assert ("prop", 1, "shared") in after


def test_construct_seeds_a_group_of_binds_with_locked_flags_with_those_locks():
    # Binds made inside the user namespace of an inherited mount (flag locks: atime), then shared.
    vol = dict(M(2, 1, "/vol", sb="v", shared=8), locked_flags=["atime"])
    tree = [M(1, None, "/", sb="r"), vol, dict(M(3, 1, "/vol2", sb="v", shared=8), locked_flags=["atime"])]
    ops = construct.plan(tree, userns_copies={"ns": ({1}, {2, 3})})
    seed = next(op[1] for op in ops if op[0] == "seed")
    assert ops[ops.index(next(op for op in ops if op[0] == "seed")) + 1] == ("lockseed", seed, 2)
    assert ("make", 2, ("node", seed, "")) in ops and ("make", 3, ("node", seed, "")) in ops
    tree[2] = dict(tree[2], locked_flags=["ro", "atime"])
    with pytest.raises(construct.PlanError, match=r"^mount 3 \(/vol2\): its peer group 8 has members with other "
                                                  r"locks or locked flags than mount 2 \(/vol\)"):
        construct.plan(tree, userns_copies={"ns": ({1}, {2, 3})})


# A sandbox with its own pids only (`unshare -U -r -p -f` without -m, as
# scenarios/userns/rootless_pidns_no_mnt, here by root): its user namespace does not own the mount
# namespace, so its stand-in is forked late, once every mount exists.
PIDNS_NO_MNT = """
mkdir -p /run/c
echo mine > /run/c/file
unshare -U -r -p -f sh -c '
  exec 7</run/c/file
  exec /.hold/mntcr-hold infinity' </dev/null >/dev/null 2>&1 &
u=$!
while ! c=$(pgrep -P $u mntcr-hold); do sleep 0.05; done
while [ ! -e /proc/$c/fd/7 ]; do sleep 0.05; done
hold
"""


def test_late_standin_made_under_the_yard(case):
    """The late stand-in's namespaces are opened with the yard of sources=yard (< 6.15) over "/",
    where "/proc" is the yard's empty root: restore failed `No such file or directory:
    '/proc/PID/ns/pid'` (session 35) before it opened them through its own /proc fd."""
    pid = case.start(PIDNS_NO_MNT, daemons=("unshare",))   # (it waits for its child)
    before = enginecase.take(pid)
    images = case.new_images_dir()
    env = {strategy.ENV: "sources=yard"}
    r = mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS, env=env)
    assert r.returncode == 0, r.stderr
    pidfile = images + ".pid"
    r = mntcr("restore", "-D", images, *enginecase.RESTORE_EXTERNALS, "--devices", "all", "--pidfile", pidfile,
              env=env)
    assert r.returncode == 0, r.stderr
    with open(pidfile) as f:
        pid = int(f.read())
    case.trees.append(pid)
    enginecase.assert_same(before, enginecase.take(pid))
