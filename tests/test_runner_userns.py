"""Snapshots of trees with user namespaces: maps, owners, credentials, locked mounts."""

import os
import shutil

import pytest

from zdtm import snapshot
from zdtm.flavors import ns
from tests.test_runner_snapshot import start

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="the ns flavor needs root; user namespaces are made with unshare")

# The child (a rootless-style namespace: root mapped) gets /mnt/x either inherited from the holder's
# namespace (so the kernel locks it in the copy) or mounted by itself after the copy (unlocked).
# Both trees look the same in mountinfo; only the lock differs.
INHERITED = """\
mount -t tmpfs t /mnt
mkdir /mnt/x
mount -t tmpfs -o ro,nosuid inherited /mnt/x
unshare -U -r -m sh -c 'touch /tmp/ok; exec sleep infinity' </dev/null >/dev/null 2>&1 &
zdtm_wait /tmp/ok
exec zdtm-hold"""

OWN = """\
mount -t tmpfs t /mnt
mkdir /mnt/x
unshare -U -r -m sh -c 'mount -t tmpfs -o ro,nosuid inherited /mnt/x; touch /tmp/ok; exec sleep infinity' \
  </dev/null >/dev/null 2>&1 &
zdtm_wait /tmp/ok
mount -t tmpfs -o ro,nosuid inherited /mnt/x
exec zdtm-hold"""


def snap(tmp_path, setup):
    tmp_path.mkdir(exist_ok=True)
    sc, running = start(tmp_path, setup)
    try:
        return snapshot.take(running.pid)
    finally:
        ns.FLAVOR.stop(running)


def test_user_namespace_owner_maps_and_locks(tmp_path):
    s = snap(tmp_path, INHERITED)
    child = next(p for p in s.procs if p.userns != "init")
    holder = next(p for p in s.procs if p.userns == "init")
    assert child.userns == "init > [uid 0 0 1 gid 0 0 1 setgroups deny]"
    # Its mount namespace belongs to its own user namespace; pid/uts/ipc/net stay the holder's.
    assert child.owners.startswith("mnt=own pid=init ")
    # (root of its own user namespace: every capability there, the runner's bounding set)
    assert child.creds.startswith("uid 0,0,0,0 gid 0,0,0,0 groups - proc 0:0 caps inh 0000000000000000 prm ")
    # Everything the child inherited is locked, flags included; nothing of the holder is.
    assert child.locks["/mnt/x"] == "locked flags=ro,nosuid,atime"
    assert child.locks["/mnt"].startswith("locked flags=")
    assert holder.lock_lines() == []
    assert "lock /mnt/x: locked flags=ro,nosuid,atime" in s.text()
    assert "user: {P0} {P1}=runner's" in s.text() or "user: {P0}=runner's {P1}" in s.text()


def test_diff_names_a_lock_that_vanished_or_appeared(tmp_path):
    a = snap(tmp_path / "a", INHERITED)
    b = snap(tmp_path / "b", OWN)
    ca = next(p for p in a.procs if p.userns != "init")
    cb = next(p for p in b.procs if p.userns != "init")
    assert ca.tree_text == cb.tree_text  # mountinfo cannot tell them apart
    equal, report = snapshot.compare(a, b)
    assert not equal
    assert "mount locks differ" in report
    assert "lock vanished from /mnt/x (before: locked flags=ro,nosuid,atime; after: unlocked)" in report
    equal, report = snapshot.compare(b, a)
    assert not equal
    assert "lock appeared on /mnt/x (before: unlocked; after: locked flags=ro,nosuid,atime)" in report


# The child's /mnt/x is a tmpfs it made itself (its user namespace owns the superblock) or one the
# host's root made in the child's mount namespace (the runner's owns it): same mountinfo, same
# (absent) locks; only the superblock's owner differs.
SB_MADE_INSIDE = """\
mount -t tmpfs t /mnt
mkdir /mnt/x
unshare -U -r -m sh -c 'mount -t tmpfs x /mnt/x; touch /tmp/ok; exec sleep infinity' </dev/null >/dev/null 2>&1 &
zdtm_wait /tmp/ok
exec zdtm-hold"""

SB_MADE_OUTSIDE = """\
mount -t tmpfs t /mnt
mkdir /mnt/x
unshare -U -r -m sh -c 'touch /tmp/ok; exec sleep infinity' </dev/null >/dev/null 2>&1 &
zdtm_wait /tmp/ok
nsenter -t $! -m mount -t tmpfs x /mnt/x
exec zdtm-hold"""


def test_diff_names_a_superblock_owner_change(tmp_path):
    a = snap(tmp_path / "a", SB_MADE_INSIDE)
    b = snap(tmp_path / "b", SB_MADE_OUTSIDE)
    ca = next(p for p in a.procs if p.userns != "init")
    cb = next(p for p in b.procs if p.userns != "init")
    assert ca.tree_text == cb.tree_text and ca.lock_lines() == cb.lock_lines()
    assert ca.sb_owners == {"/mnt/x": "init > [uid 0 0 1 gid 0 0 1 setgroups deny]"}
    assert cb.sb_owners == {}
    equal, report = snapshot.compare(a, b)
    assert not equal
    assert "superblock owners differ" in report
    assert ("superblock owner changed on /mnt/x (before: init > [uid 0 0 1 gid 0 0 1 setgroups deny]; "
            "after: init)") in report
