"""Engine round trips of mount propagation: peer groups, masters, unbindable, cross-namespace
groups, masters outside the dump, non-uniform propagation and the talk's reparenting case.

Besides the snapshot comparison (which names peer groups and masters up to
renumbering), propagation is exercised: a probe mount is made at given places
before dump and after restore, and where its copies appear must be the same.
"""

from __future__ import annotations

import pytest

from enginecase import assert_same, case, take  # noqa: F401  (case: fixture)
from zdtm.snapshot import run_check, tree_pids

# Mount a tmpfs named "probe" at each place in turn; print where copies appeared; unmount them all.
PROBE = r"""
for where in {places}; do
    mount -t tmpfs probe "$where"
    echo "probe at $where appears at: $(grep ' - tmpfs probe ' /proc/self/mountinfo | cut -d' ' -f5 | sort | tr '\n' ' ')"
    while grep -q ' - tmpfs probe ' /proc/self/mountinfo; do
        umount "$(grep ' - tmpfs probe ' /proc/self/mountinfo | cut -d' ' -f5 | head -n1)"
    done
done
"""


def probe(pid: int, places: str) -> str:
    """Run PROBE inside the namespaces and root of `pid`; return its output."""
    out = run_check(pid, PROBE.format(places=places), timeout=30)
    assert "[exit" not in out, out
    return out


KINDS = {
    "private": ("mount --bind /mnt/m /mnt/p", "/mnt/m/sub /mnt/p/sub"),
    "shared": ("mount --make-shared /mnt/m; mount --bind /mnt/m /mnt/p", "/mnt/m/sub /mnt/p/sub"),
    "shared-subdir": ("mount --make-shared /mnt/m; mkdir /mnt/m/sub/d; mount --bind /mnt/m/sub /mnt/p",
                      "/mnt/m/sub/d /mnt/p/d"),
    "slave": ("mount --make-shared /mnt/m; mount --bind /mnt/m /mnt/p; mount --make-slave /mnt/p",
              "/mnt/m/sub /mnt/p/sub"),
    "shared+slave": ("mount --make-shared /mnt/m; mount --bind /mnt/m /mnt/p; mount --make-slave /mnt/p; "
                     "mount --make-shared /mnt/p; mkdir /mnt/q; mount --bind /mnt/p /mnt/q",
                     "/mnt/m/sub /mnt/p/sub /mnt/q/sub"),
    "unbindable": ("mount --make-unbindable /mnt/m; mount -t tmpfs p /mnt/p; mkdir /mnt/p/sub; "
                   "! mount --bind /mnt/m /mnt/p/sub 2>/dev/null", "/mnt/m/sub /mnt/p/sub"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_propagation_kind(case, kind):
    """shared, slave, shared+slave, private, unbindable (and a peer whose root is a sub-directory)."""
    new = round_trip_kind(case, kind)
    if kind == "unbindable":
        m = next(m for m in take(new).root.mounts if m.mountpoint == "/mnt/m")
        assert m.unbindable


def round_trip_kind(case, kind: str) -> int:
    """Build propagation kind `kind`, C/R it, assert the tree is equal and a probe mount propagates
    as it did before; return the restored pid."""
    setup, places = KINDS[kind]
    pid = case.start(f"mkdir /mnt/m /mnt/p; mount -t tmpfs m /mnt/m; mkdir /mnt/m/sub\n{setup}\nhold\n")
    before = take(pid)
    seen_before = probe(pid, places)
    new = case.cr(pid)
    assert_same(before, take(new))
    assert probe(new, places) == seen_before
    return new


def test_peer_group_across_namespaces(case):
    """A shared group with members in the root's namespace and in a child's nested namespace."""
    setup = """
mkdir /mnt/s; mount -t tmpfs s /mnt/s; mkdir /mnt/s/x
mount --make-shared /mnt/s
unshare -m --propagation unchanged sh -c '
    mkdir -p /mnt/own; mount -t tmpfs own /mnt/own
    mkdir -p /mnt/s2; mount --bind /mnt/s /mnt/s2
    touch /tmp/child-ready
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /tmp/child-ready
hold
"""
    pid = case.start(setup)
    before = take(pid)
    assert before.snap.cross_peers, "the setup should make a group spanning two namespaces"
    child_before = [p for p in tree_pids(pid) if p != pid][0]
    seen_before = _cross_probe(pid, child_before)
    new = case.cr(pid)
    after = take(new)
    assert_same(before, after)
    children = [p for p in tree_pids(new) if p != new]
    assert len(children) == 1
    assert _cross_probe(new, children[0]) == seen_before


def _cross_probe(parent: int, child: int) -> str:
    """Mount in the parent's /mnt/s/x; report where the child's namespace sees it; unmount."""
    run_check(parent, "mount -t tmpfs probe /mnt/s/x", timeout=30)
    try:
        with open(f"/proc/{child}/mountinfo") as f:
            return " ".join(sorted(line.split()[4] for line in f if " - tmpfs probe " in line))
    finally:
        run_check(parent, "umount /mnt/s/x", timeout=30)


def test_external_master(case):
    """A slave of a group outside the dump (an outer namespace's shared tmpfs), declared --external."""
    outer = case.outer()
    outer.sh(f"mkdir {outer.path}/early {outer.path}/late; echo from-outer > {outer.path}/f")
    setup = """
mount --make-slave /ext
mkdir /mnt/e; mount --bind /ext /mnt/e
hold
"""
    pid = case.start(setup, outer=outer, binds=((outer.path, "/ext"),))
    before = take(pid, check="cat /ext/f")
    ext = next(m for m in before.root.mounts if m.mountpoint == "/ext")
    assert ext.master is not None and ext.shared is None
    outer.sh(f"mount -t tmpfs early {outer.path}/early")
    seen = _mounts_named(pid, "early")
    outer.sh(f"umount {outer.path}/early")
    assert seen == ["/ext/early", "/mnt/e/early"]
    new = case.cr(pid, dump_extra=("--external", "mnt[/ext]:ext"),
                  restore_extra=("--external", f"mnt[ext]:{outer.path}"), outer=outer)
    after = take(new, check="cat /ext/f")
    assert_same(before, after)
    # The restored slave still receives from the outer group (and nothing goes back).
    outer.sh(f"mount -t tmpfs late {outer.path}/late")
    assert _mounts_named(new, "late") == ["/ext/late", "/mnt/e/late"]
    run_check(new, "mount -t tmpfs back /ext/early", timeout=30)
    assert "back" not in outer.sh("cat /proc/self/mountinfo")


def test_external_master_of_a_subdirectory(case):
    """CRIU's mnt_ext_master: a bind of a DIRECTORY of the outer shared tmpfs, made a slave, declared
    external with that directory as its host path (not the outer mount's root): restore joins the
    outer group through a clone rooted at the directory (SET_GROUP copies only from a mount root)."""
    outer = case.outer()
    outer.sh(f"mkdir -p {outer.path}/sub/late; echo from-sub > {outer.path}/sub/f")
    setup = """
mount --make-slave /ext
hold
"""
    pid = case.start(setup, outer=outer, binds=((f"{outer.path}/sub", "/ext"),))
    before = take(pid, check="cat /ext/f")
    ext = next(m for m in before.root.mounts if m.mountpoint == "/ext")
    assert ext.master is not None and ext.root == "/sub"
    new = case.cr(pid, dump_extra=("--external", "mnt[/ext]:ext"),
                  restore_extra=("--external", f"mnt[ext]:{outer.path}/sub"), outer=outer)
    after = take(new, check="cat /ext/f")
    assert_same(before, after)
    outer.sh(f"mount -t tmpfs late {outer.path}/sub/late")
    assert _mounts_named(new, "late") == ["/ext/late"]


def _mounts_named(pid: int, source: str) -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return sorted(line.split()[4] for line in f if f" - tmpfs {source} " in line)


def test_non_uniform_propagation(case):
    """Peers that differ: a child mount propagated to the peers that existed, then a new peer
    bound without it (and a slave made after)."""
    setup = """
mkdir /mnt/a /mnt/b /mnt/c /mnt/d
mount -t tmpfs s /mnt/a; mkdir /mnt/a/x /mnt/a/y
mount --make-shared /mnt/a
mount --bind /mnt/a /mnt/b
mount -t tmpfs x /mnt/a/x
mount --bind /mnt/a /mnt/c
mount --bind /mnt/a /mnt/d; mount --make-slave /mnt/d
hold
"""
    pid = case.start(setup)
    before = take(pid)
    where_x = sorted(m.mountpoint for m in before.root.mounts if m.source == "x")
    assert where_x == ["/mnt/a/x", "/mnt/b/x"]
    seen = probe(pid, "/mnt/a/y /mnt/c/y /mnt/d/y")
    new = case.cr(pid)
    assert_same(before, take(new))
    assert probe(new, "/mnt/a/y /mnt/c/y /mnt/d/y") == seen


@pytest.mark.parametrize("parent", ["shared", "private", "slave"])
def test_talk_reparenting(case, parent):
    """`mount --bind a b` three times under a parent with the given propagation (the talk's case:
    3 to more than 7 mounts, some reparented onto each other)."""
    make = {"shared": "mount --make-shared /mnt/t",
            "private": "",
            "slave": "mount --make-shared /mnt/t; mkdir /mnt/u; mount --bind /mnt/t /mnt/u; "
                     "mount --make-slave /mnt/u; mount --make-shared /mnt/u"}[parent]
    where = "/mnt/u" if parent == "slave" else "/mnt/t"
    setup = f"""
mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/a /mnt/t/b
{make}
cd {where}
mount --bind a b; mount --bind a b; mount --bind a b
cd /
hold
"""
    pid = case.start(setup)
    before = take(pid)
    n = len([m for m in before.root.mounts if m.mountpoint.startswith(where + "/")])
    assert n >= 3
    new = case.cr(pid)
    assert_same(before, take(new))


@pytest.mark.parametrize("how", ["detached", "yard", "mount2"])
def test_peers_no_member_covers(case, monkeypatch, how):
    """A peer group of /a and /b binds (their "/" mount gone) and a slave group rooted at /c/d
    outside both: restored through a helper mount of the superblock's root, detached (Linux
    >= 6.15), attached in a yard (older kernels: MNTCR_STRATEGY=sources=yard), or with mount(2)
    for propagation (no mount_setattr: MNTCR_STRATEGY=flags=remount). Propagation still works: a
    mount under the master's subtree reaches the slave."""
    if how == "yard":
        monkeypatch.setenv("MNTCR_STRATEGY", "sources=yard")
    elif how == "mount2":
        monkeypatch.setenv("MNTCR_STRATEGY", "flags=remount")
    setup = """
mkdir -p /mnt/t /mnt/pa /mnt/pb /mnt/pd /mnt/pc
mount -t tmpfs t /mnt/t; mount --make-shared /mnt/t
mkdir -p /mnt/t/a /mnt/t/b /mnt/t/c/d/e
mount --bind /mnt/t/a /mnt/pa; mount --bind /mnt/t/b /mnt/pb
mount --bind /mnt/t/c/d /mnt/pd; mount --make-slave /mnt/pd; mount --make-shared /mnt/pd
mount --bind /mnt/t/c /mnt/pc
umount /mnt/t
hold
"""
    pid = case.start(setup)
    before = take(pid)
    groups = {m.mountpoint: (m.shared, m.master) for m in before.root.mounts if m.mountpoint.startswith("/mnt/p")}
    assert groups["/mnt/pa"][0] == groups["/mnt/pb"][0] == groups["/mnt/pc"][0] is not None
    assert groups["/mnt/pd"][1] == groups["/mnt/pa"][0]
    seen = probe(pid, "/mnt/pc/d/e /mnt/pd/e")
    assert "/mnt/pd/e" in seen.splitlines()[0]   # master -> slave
    new = case.cr(pid)
    assert_same(before, take(new))
    assert probe(new, "/mnt/pc/d/e /mnt/pd/e") == seen


def test_shared_mounts_over_the_fd_budget(case):
    """More shared mounts than the restorer's fd budget (a low RLIMIT_NOFILE): it keeps only the
    covered ones' fds and finds the others again by path (restore._plan_fds), the same tree."""
    setup = """
ulimit -n 600
for i in $(seq 60); do
  mkdir -p /mnt/s$i /mnt/b$i; mount -t tmpfs s$i /mnt/s$i; mount --make-shared /mnt/s$i
  mount --bind /mnt/s$i /mnt/b$i
done
for i in 1 2 3; do mount -t tmpfs c$i /mnt/s$i; done
hold
"""
    pid = case.start(setup)
    before = take(pid)
    images = case.new_images_dir()
    case.dump(pid, images)
    # budget = soft // 2 - mounts // 8 - 256: about 25 under a hard limit of 600 (the restorer
    # raises its soft one up to it), below the 120 shared mounts
    pid = case.restore(images, wrap=("prlimit", "--nofile=600:600", "--"))
    assert_same(before, take(pid))
