"""A tree of many mounts within the dump's RLIMIT_NOFILE (engine/prestop.py): the checks before the
stop hold a window of probe fds at a time (`_check_probes`), dump raises its soft limit to what the
tree's mounts need where they need it (`_fd_room`), and refuses before the stop, with what to raise,
where the hard limit is too low as well (it failed with EMFILE, or misjudged a proc mount whose
files it could not open, before session 33). Only the mounts dump clones count: a tree of many binds
within one archived root dumps under a limit below its mount count (refused before session 34)."""

from __future__ import annotations

import os
import re

from enginecase import STOP_WATCH, case, mntcr, py_hold, was_stopped  # noqa: F401  (fixture)

# proc mounts: one superblock each, each probed before the stop and once stopped (its pid namespace)
MOUNTS = 300
SETUP = STOP_WATCH + (f"i=0; while [ $i -lt {MOUNTS} ]; do mkdir -p /run/p/$i; mount -t proc proc /run/p/$i; "
                      "i=$((i+1)); done\nhold\n")
EXTERNALS = ("--external", "mnt[/usr]:usr", "--external", "mnt[/etc]:etc")


def test_many_probed_mounts_dumped_and_restored_under_a_low_soft_fd_limit(case):
    """MOUNTS proc mounts dumped by a dump whose soft RLIMIT_NOFILE is 200 (hard 4096): it dumps,
    and the restored tree shows every one."""
    pid = case.start(SETUP, timeout=180)
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *EXTERNALS, wrap=("prlimit", "--nofile=200:4096"), timeout=300)
    assert r.returncode == 0, r.stderr
    new = case.restore(images)
    with open(f"/proc/{new}/mountinfo") as f:
        shown = [line.split()[4] for line in f if line.split()[4].startswith("/run/p/")]
    assert len(shown) == MOUNTS, len(shown)


def test_many_mounts_beyond_the_hard_fd_limit_refused_unstopped(case):
    """The same tree dumped under a hard RLIMIT_NOFILE of 200: refused naming the limit and what to
    raise it to, before the stop."""
    pid = case.start(SETUP, timeout=180)
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *EXTERNALS, wrap=("prlimit", "--nofile=200"), timeout=300)
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(r"mntcr dump: dump clones \d+ mounts of the tree and may hold an fd on each, beyond its "
                        r"RLIMIT_NOFILE of 200 \(hard\): raise it to \d+ at least .*\n", r.stderr), r.stderr
    assert not os.path.exists(images)
    assert not was_stopped(pid), "dump stopped the tree before it refused"


def test_many_binds_of_one_tmpfs_dumped_under_a_hard_fd_limit_below_their_count(case):
    """MOUNTS binds of directories of one tmpfs (one archived root: dump clones it once) dumped under
    a hard RLIMIT_NOFILE of 200: dumped and restored, every bind shown again (before session 34
    refused, the limit counted every mount of the tree)."""
    pid = case.start(STOP_WATCH + "mkdir /run/t; mount -t tmpfs t /run/t\n"
                     f"i=0; while [ $i -lt {MOUNTS} ]; do mkdir -p /run/t/d$i /run/b/$i; echo $i > /run/t/d$i/f; "
                     "mount --bind /run/t/d$i /run/b/$i; i=$((i+1)); done\nhold\n", timeout=180)
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *EXTERNALS, wrap=("prlimit", "--nofile=200"), timeout=300)
    assert r.returncode == 0, r.stderr
    new = case.restore(images)
    with open(f"/proc/{new}/mountinfo") as f:
        shown = [line.split()[4] for line in f if line.split()[4].startswith("/run/b/")]
    assert len(shown) == MOUNTS, len(shown)
    with open(f"/proc/{new}/root/run/b/{MOUNTS - 1}/f") as f:
        assert f.read() == f"{MOUNTS - 1}\n"


# In a user namespace's copy of the mounts, COVERS binds of one tmpfs's files lie on directories of
# another tmpfs, locked there: dump's clone of it brings them along, and takes each covered directory
# from the bind of `sub`, which shows it uncovered (engine/nscopy.py _covered_views): one fd a cover.
COVERS = 300
COVERED = STOP_WATCH + f"""mkdir /run/t /run/o /run/u; mount -t tmpfs t /run/t; mount -t tmpfs o /run/o
i=0; while [ $i -lt {COVERS} ]; do mkdir -p /run/t/sub/d$i /run/o/$i; echo $i > /run/t/sub/d$i/f; i=$((i+1)); done
mount --bind /run/t/sub /run/u
i=0; while [ $i -lt {COVERS} ]; do mount --bind /run/o/$i /run/t/sub/d$i; i=$((i+1)); done
""" + py_hold("import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000 | 0x00020000) == 0\n")


def test_covered_directories_views_counted_before_the_stop(case):
    """COVERS locked covers of one archived tmpfs's directories in a user namespace's mount namespace,
    dumped under a hard RLIMIT_NOFILE of 200: each covered directory's view is an fd dump holds once
    stopped, so the tree is refused before the stop, naming the limit (the count once left them out)."""
    pid = case.start(COVERED, timeout=180)
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *EXTERNALS, wrap=("prlimit", "--nofile=200"), timeout=300)
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(r"mntcr dump: dump clones \d+ mounts of the tree and may hold an fd on each, beyond its "
                        r"RLIMIT_NOFILE of 200 \(hard\): raise it to \d+ at least .*\n", r.stderr), r.stderr
    assert not was_stopped(pid), "dump stopped the tree before it refused"
    r = mntcr("dump", "-t", str(pid), "-D", images, *EXTERNALS, wrap=("prlimit", "--nofile=1000"), timeout=300)
    assert r.returncode == 0, r.stderr
    new = case.restore(images)
    with open(f"/proc/{new}/root/run/u/d{COVERS - 1}/f") as f:
        assert f.read() == f"{COVERS - 1}\n"
