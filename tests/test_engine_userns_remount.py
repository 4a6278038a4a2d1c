"""User namespaces on kernels without mount_setattr (< 5.12, strategy flags=remount): locks are
probed, and locked flags made, with mount(2) remounts (engine/remount.py).

The host kernel has mount_setattr, so these tests take it away (seccomp: ENOSYS, as a 5.10 kernel
answers) from the engine's processes, with the strategy forced to what such a kernel chooses; what
they compare against is probed by this process, with mount_setattr.
"""

import os
import subprocess

import pytest

import enginecase
from enginecase import case, mntcr  # noqa: F401
from engine import forkrun, mntlocks, mountinfo, strategy, topology

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="making user namespaces with any map needs root"),
              enginecase.needs_seccomp]

OLD = "flags=remount,sources=yard"

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


def test_rootless_tree_round_trips_without_mount_setattr(case, tmp_path):
    """Locked mounts and flags, an unlocked bind with locked flags and a locked subtree below an
    unlocked recursive bind come back the same, twice, by an engine for which mount_setattr fails."""
    pid = case.start(SETUP)
    before = enginecase.take(pid)
    locks = "\n".join(line for p in before.snap.procs for line in p.lock_lines())
    assert "flags=ro,nosuid,nodev,atime" in locks and "locked flags=nodev,atime" in locks, locks
    for _ in range(2):
        images = case.new_images_dir()
        env = {strategy.ENV: OLD}
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
        enginecase.assert_same(before, enginecase.take(pid))
