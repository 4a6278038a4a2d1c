"""Peer groups and masters built while mounting (engine/construct.py, strategy sharing=construct:
kernels without MOVE_MOUNT_SET_GROUP, Linux < 5.15).

The planner is checked on its own (which mounts are made, from what, which ones propagation
makes), and the whole path on this kernel with MNTCR_STRATEGY forcing what a 5.10 kernel
would choose (sharing=construct, flags=remount, sources=yard): round trips compared with the
canonical comparison, propagation probed after restore, and dump refusing, with the tree left
running, what no order can build.
"""

from __future__ import annotations

import os
import random
import re

import pytest

import enginecase
from enginecase import assert_same, case, mntcr, take  # noqa: F401  (case: fixture)
from engine import construct
from test_engine_propagation import KINDS, probe, round_trip_kind

OLD_KERNEL = "sharing=construct,flags=remount,sources=yard"


def M(id, parent, mp, root="/", sb="a", shared=None, master=None, **kw):
    """An image mount dict with what the planner reads."""
    return dict(id=id, parent=parent, mountpoint=mp, root=root, sb=sb, shared=shared, master=master, **kw)


BASE = [M(1, None, "/", sb="root"), M(2, 1, "/mnt", sb="root")]


def plan(mounts):
    return construct.plan(mounts, helper_ok=lambda sb: sb != "root")


def made(ops):
    """Mount ids in the order they are made, and the copies each attach adopts."""
    return [op[1] for op in ops if op[0] == "make"], {op[1]: op[2] for op in ops if op[0] == "attach" and op[2]}


def test_members_are_binds_of_a_seed():
    """A shared mount and its bind: a seed of the superblock's root is made shared, both members are
    binds of it (the bind at its root /a), a private child under the shared parent is made private
    again once attached, and the seed is dropped at the end."""
    ops = plan(BASE + [M(10, 2, "/mnt/x", shared=5), M(11, 10, "/mnt/x/a/sub", sb="s"),
                       M(12, 10, "/mnt/x/b", root="/a", shared=5)])
    assert ("seed", -1, "a", "/", None) in ops and ("prop", -1, "shared") in ops
    assert ("make", 10, ("node", -1, "")) in ops and ("make", 12, ("node", -1, "a")) in ops
    assert ops.index(("attach", 11, [])) < ops.index(("prop", 11, "private"))
    assert ops[-1] == ("drop", -1)


def test_rbind_copy_is_adopted():
    """rbind under a shared parent: the child below the source waits until the bind exists, so
    attaching it propagates the copy below the bind (adopted, not made)."""
    order, adopted = made(plan(BASE + [M(10, 2, "/mnt/x", shared=5), M(11, 10, "/mnt/x/a/sub", sb="s"),
                                       M(12, 10, "/mnt/x/b", root="/a", shared=5),
                                       M(13, 12, "/mnt/x/b/sub", sb="s", shared=6)]))
    assert order == [1, 2, 10, 12, 11] and adopted == {11: [13]}


@pytest.mark.parametrize("variant", ["late_peer", "umount_copy"])
def test_non_uniform_order(variant):
    """A child the later peer lacks is attached before that peer is made; one both have is attached
    after (nonuniform.yaml)."""
    tree = BASE + [M(10, 2, "/mnt/a", shared=5), M(12, 2, "/mnt/b", shared=5)]
    if variant == "late_peer":
        tree += [M(11, 10, "/mnt/a/x", sb="e", shared=7), M(13, 10, "/mnt/a/y", sb="l", shared=8),
                 M(14, 12, "/mnt/b/y", sb="l", shared=8)]
        order, adopted = made(plan(tree))
        assert order.index(11) < order.index(12) < order.index(13) and adopted == {13: [14]}
    else:
        tree += [M(13, 10, "/mnt/a/x", sb="c", shared=7)]
        order, adopted = made(plan(tree))
        assert order.index(13) < order.index(12) and not adopted


def test_slaves_and_shared_slaves():
    """A slave is a bind of a master member made slave; a shared+slave group starts from a seed that
    is a bind of the master's seed, made slave then shared; its members are binds of that seed."""
    ops = plan(BASE + [M(10, 2, "/mnt/m", shared=5), M(11, 2, "/mnt/p", master=5),
                       M(12, 2, "/mnt/q", shared=8, master=5), M(13, 2, "/mnt/q2", root="/d", shared=8, master=5)])
    assert ops.index(("make", 11, ("node", -1, ""))) < ops.index(("prop", 11, "slave"))
    i = ops.index(("seed", -2, "a", "/", ("node", -1, "")))
    assert ops[i + 1:i + 3] == [("prop", -2, "slave"), ("prop", -2, "shared")]
    assert ("make", 13, ("node", -2, "d")) in ops


def test_external_master():
    """A container root that is a slave of a group outside the image is a bind of the host's mount
    (a slave of that group in the service namespace)."""
    ops = plan([M(1, None, "/", sb="root", master=99, external="root"), M(2, 1, "/mnt", sb="t")])
    assert ops[0] == ("make", 1, ("ext", 1, ""))


def test_reparenting_refused():
    """`mount --bind a b` twice under a shared parent: the second bind's copies slide beneath the
    first ones (the talk's reparenting); no order makes that, so the plan names the mount."""
    tree = BASE + [M(10, 2, "/mnt/t", shared=5),
                   M(11, 10, "/mnt/t/b", root="/a", shared=5), M(12, 10, "/mnt/t/a", root="/a", shared=5),
                   M(13, 11, "/mnt/t/b", root="/a", shared=5), M(14, 12, "/mnt/t/a", root="/a", shared=5)]
    with pytest.raises(construct.PlanError, match=r"^mount \d+ \(/mnt/t/[ab]\): .*reparenting.*Linux >= 5\.15"):
        plan(tree)


def test_second_source_groups_start_from_their_own_seed():
    """One superblock under two sources (two_sources_shared.yaml): each peer group's seed is a mount of
    the superblock shown with its members' source, its members and a slave are binds of that seed, and
    a private mount under the second source is a plain clone (restore mounts it again under it)."""
    tree = BASE + [M(10, 2, "/mnt/one", sb="q", shared=5), M(11, 2, "/mnt/onepeer", sb="q", shared=5),
                   M(12, 2, "/mnt/two", sb="q", shared=6), M(13, 2, "/mnt/peer", sb="q", shared=6),
                   M(14, 2, "/mnt/slave", sb="q", master=6), M(15, 2, "/mnt/priv", sb="q")]
    names = {1: "r", 2: "r", 10: "q-one", 11: "q-one", 12: "q-two", 13: "q-two", 14: "q-two", 15: "q-two"}
    ops = construct.plan(tree, helper_ok=lambda sb: sb != "root", sources=names)
    seeds = {op[1]: op[4] for op in ops if op[0] == "seed"}
    src = {op[1]: op[2] for op in ops if op[0] == "make"}
    shown = {sid: names[s[1]] for sid, s in seeds.items()}
    assert all(s[0] == "source" for s in seeds.values()) and sorted(shown.values()) == ["q-one", "q-two"]
    for mid in (10, 11, 12, 13, 14):
        kind, sid, _ = src[mid]
        assert kind == "node" and shown[sid] == names[mid], (mid, src[mid])
    assert src[15] is None and ("prop", 14, "slave") in ops


@pytest.mark.parametrize("case_", ["peers", "slave"])
def test_second_source_refused_where_a_bind_shows_another(case_):
    """Where no member or master shows a mount's source, no bind gives it (a bind keeps its source's):
    the plan names the mount and the sources (a tree Linux >= 5.15 makes with MOVE_MOUNT_SET_GROUP)."""
    second = {"shared": 5} if case_ == "peers" else {"master": 5}
    tree = BASE + [M(10, 2, "/mnt/a", sb="q", shared=5), M(11, 2, "/mnt/b", sb="q", **second)]
    names = {10: "one", 11: "two"}
    want = {"peers": r"^mount 1[01] \(/mnt/[ab]\): its peer group 5 has members shown with other sources",
            "slave": r"^mount 11 \(/mnt/b\): shown with source 'two', and the mounts of its peer group or master"}
    with pytest.raises(construct.PlanError, match=want[case_] + r".*Linux >= 5\.15"):
        construct.plan(tree, helper_ok=lambda sb: sb != "root", sources=names)
    construct.plan(tree, helper_ok=lambda sb: sb != "root")   # (the same tree, sources not checked: planned)


# bind_matrix[parent=shared_slave-bind=rbind-child=slave]: /mnt (shared:3 master:2, with its peer
# /run/peer) gets an rbind of /run/src/a whose child is a slave of /run/cmaster (shared:1); the
# rbind's copies appear in the peer; a later mount in the master propagates to both.
RBIND_SLAVE = [M(1, None, "/", sb="root"), M(73, 1, "/run", sb="top"), M(74, 1, "/mnt", sb="top2"),
               M(75, 73, "/run/src", sb="src"), M(76, 73, "/run/cmaster", sb="cm", shared=1),
               M(77, 75, "/run/src/a/sub", sb="cm", master=1), M(78, 73, "/run/master", sb="ma", shared=2),
               M(79, 74, "/mnt", sb="ma", shared=3, master=2), M(80, 73, "/run/peer", sb="ma", shared=3, master=2),
               M(81, 79, "/mnt/b", root="/a", sb="src", shared=4),
               M(82, 81, "/mnt/b/sub", sb="cm", shared=5, master=1),
               M(83, 80, "/run/peer/b", root="/a", sb="src", shared=4),
               M(84, 83, "/run/peer/b/sub", sb="cm", shared=5, master=1),
               M(85, 78, "/run/master/late", sb="late", shared=6),
               M(86, 79, "/mnt/late", sb="late", shared=7, master=6),
               M(87, 80, "/run/peer/late", sb="late", shared=7, master=6)]


def renumbered(tree, new_ids):
    """The tree with mount ids (and parents) renamed by the list new_ids, peer group ids shuffled too."""
    mid = dict(zip((m["id"] for m in tree), new_ids))
    groups = sorted({g for m in tree for g in (m["shared"], m["master"]) if g})
    gid = dict(zip(groups, random.Random(len(new_ids)).sample(range(100, 200), len(groups))))
    return [dict(m, id=mid[m["id"]], parent=mid.get(m["parent"]), shared=gid.get(m["shared"]),
                 master=gid.get(m["master"])) for m in tree]


def renamed_back(ops, new_ids, tree):
    back = dict(zip(new_ids, (m["id"] for m in tree)))

    def name(x):
        if isinstance(x, int) and x in back:
            return back[x]
        if isinstance(x, (list, tuple)):
            return type(x)(name(y) for y in x)
        return x
    return [name(op) for op in ops]


def test_plan_ignores_mount_id_order():
    """Kernels before 6.8 reuse freed mount ids, so their order is not the creation order (5.10 gave
    this tree ids in which /mnt/b came before the peer its rbind propagates into, and dump refused it
    as reparenting). The plan comes from the tree alone: every renumbering gives the same plan."""
    want = plan(RBIND_SLAVE)
    assert made(want)[1] == {81: [83], 82: [84], 85: [86, 87]}  # the copies are propagation's
    rng = random.Random(21)
    ids = [m["id"] for m in RBIND_SLAVE]
    for _ in range(40):
        new_ids = rng.sample(range(20, 20 + 3 * len(ids)), len(ids))
        assert renamed_back(plan(renumbered(RBIND_SLAVE, new_ids)), new_ids, RBIND_SLAVE) == want, new_ids


def test_blowup_order_comes_from_what_each_mount_waits_for():
    """n binds of a shared mount into itself (propagation/blowup.yaml): the k-th bind must be made
    before the later ones exist (none of them holds a copy of it), which the tree tells by how many
    mounts each waits for, not by ids or path order (/mnt/s/d10 sorts before /mnt/s/d2)."""
    script = ("mount -t tmpfs t /mnt; mkdir /mnt/s; mount -t tmpfs s /mnt/s; mount --make-shared /mnt/s; "
              "for i in 1 2 3 4 5 6 7 8 9 10; do mkdir /mnt/s/d$i; done; "
              "for i in 1 2 3 4 5 6 7 8 9 10; do mount --bind /mnt/s /mnt/s/d$i; done; cat /proc/self/mountinfo")
    import subprocess
    from engine import mountinfo
    text = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, check=True).stdout
    found = [x for x in mountinfo.parse(text) if x.mountpoint == "/mnt" or x.mountpoint.startswith("/mnt/s")]
    found = found[[x.mountpoint for x in found].index("/mnt"):]  # our /mnt and what lies on it
    ids = {x.mnt_id for x in found}
    tree = [M(1, None, "/", sb="root")] + [
        M(x.mnt_id, x.parent_id if x.parent_id in ids else 1, x.mountpoint, root=x.root, sb=x.dev,
          shared=x.shared, master=x.master) for x in found]
    assert len(tree) == 1 + 1 + 2 ** 10
    want = plan(tree)
    rng = random.Random(10)
    for _ in range(2):
        new_ids = rng.sample(range(20, 20 + 3 * len(tree)), len(tree))
        assert renamed_back(plan(renumbered(tree, new_ids)), new_ids, tree) == want


def big_tree(n):
    """n copies of a small unit (a shared mount with a bind of a subdirectory, a slave, a shared+slave
    bind, a private child under the shared mount) beside one peer group of n members and n slaves of
    it: about 8n mounts."""
    tree = [M(1, None, "/", sb="root"), M(2, 1, "/mnt", sb="root")]
    nid = iter(range(10, 10 ** 7))
    big = next(nid)
    for i in range(n):
        a, b, s, ss, c = (next(nid) for _ in range(5))
        tree += [M(a, 2, f"/mnt/a{i}", sb=f"u{i}", shared=1000 + i), M(b, 2, f"/mnt/b{i}", root="/x", sb=f"u{i}",
                                                                      shared=1000 + i),
                 M(s, 2, f"/mnt/s{i}", sb=f"u{i}", master=1000 + i),
                 M(ss, 2, f"/mnt/ss{i}", root="/y", sb=f"u{i}", shared=5000 + i, master=1000 + i),
                 M(c, a, f"/mnt/a{i}/c", sb=f"c{i}"),
                 M(next(nid), 2, f"/mnt/p{i}", root=f"/d{i % 7}", sb="big", shared=big),
                 M(next(nid), 2, f"/mnt/q{i}", sb="big", master=big)]
    return tree


def test_plan_is_near_linear():
    """The planner's work (mounts it looks at) grows about linearly with the tree: twice the mounts,
    not much more than twice the work (it was quadratic: every step went through every mount left,
    every member of a group, every root). Counted, not timed: the machine is shared."""
    work = {}
    for n in (100, 200, 400):
        p = construct._Planner(big_tree(n), lambda sb: sb != "root")
        ops = p.run()
        assert len(made(ops)[0]) == len(big_tree(n))
        work[n] = p.steps
    assert work[200] < 2.5 * work[100] and work[400] < 2.5 * work[200], work


@pytest.fixture
def old_kernel(monkeypatch):
    """Force the paths a 5.10 kernel takes (no SET_GROUP, no mount_setattr, no detached clones)."""
    monkeypatch.setenv("MNTCR_STRATEGY", OLD_KERNEL)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_kinds(case, old_kernel, kind):
    """Each propagation kind restores equal, and a probe mount propagates as it did before."""
    round_trip_kind(case, kind)


def test_round_trip_uncovered_and_cross_namespace(case, old_kernel):
    """Peers no member of which covers the others (seeded from the superblock's root), a shared+slave
    group outside them, and a group spanning a nested namespace, in one tree; restored twice."""
    setup = """
mkdir -p /mnt/t /mnt/pa /mnt/pb /mnt/pd /mnt/s
mount -t tmpfs t /mnt/t; mount --make-shared /mnt/t
mkdir -p /mnt/t/a /mnt/t/b /mnt/t/c/d/e
mount --bind /mnt/t/a /mnt/pa; mount --bind /mnt/t/b /mnt/pb
mount --bind /mnt/t/c/d /mnt/pd; mount --make-slave /mnt/pd; mount --make-shared /mnt/pd
umount /mnt/t
mount -t tmpfs s /mnt/s; mount --make-shared /mnt/s; mkdir /mnt/s/early /mnt/s/late
mount -t tmpfs early /mnt/s/early
unshare -m --propagation unchanged sh -c '
    touch /tmp/child-ready
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /tmp/child-ready
mount -t tmpfs late /mnt/s/late
hold
"""
    pid = case.start(setup)
    before = take(pid)
    assert before.snap.cross_peers
    for _ in range(2):
        pid = case.cr(pid)
        assert_same(before, take(pid))


def test_dump_refuses_what_no_order_builds(case, old_kernel):
    """Reparenting under a shared parent (three binds of a onto b): dump refuses before stopping the tree, one line naming the
    mount and the kernel that restores it; the tree keeps running and no image is left."""
    pid = case.start("mkdir /mnt/t; mount -t tmpfs t /mnt/t; mkdir /mnt/t/a /mnt/t/b\n"
                     "mount --make-shared /mnt/t; cd /mnt/t; mount --bind a b; mount --bind a b; mount --bind a b\n"
                     "cd /\nhold\n")
    images = case.new_images_dir()
    r = mntcr("dump", "-t", str(pid), "-D", images, *enginecase.DUMP_EXTERNALS)
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(r"mntcr dump: mount \d+ \(/mnt/t/[ab]\): attached on mount \d+, propagation would tuck "
                        r"its copy in peer \d+ \(/mnt/t(/[ab])?\) beneath mount \d+ \(/mnt/t/[ab]\), there already "
                        r"\(reparenting\): a copy covered at birth, .*; Linux >= 5\.15 restores it with "
                        r"MOVE_MOUNT_SET_GROUP; the tree keeps running\n", r.stderr), r.stderr
    assert not os.path.exists(images)
    with open(f"/proc/{pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in ("S", "R"), "the tree was not left running"


def test_namespace_roots():
    """A namespace root is never made shared before pivot_root (which refuses that): the first root of
    a group is made plain and shared once it is the root, a peer root in another namespace is a copy
    of that namespace made while it holds only its root, and a shared+slave root (systemd's
    PrivateTmp) is a bind of a slave seed, made shared after."""
    ops = plan([M(1, None, "/", sb="r", shared=3), M(2, 1, "/mnt", sb="t"),
                M(5, None, "/", sb="r", shared=3), M(6, 5, "/mnt", sb="t"),
                M(8, None, "/", sb="r", shared=9, master=3), M(10, 8, "/mnt", sb="t")])
    assert ops[:4] == [("make", 1, None), ("attach", 1, []), ("prop", 1, "shared"), ("nscopy", 5, 1)]
    assert ("attach", 2, [6, 10]) in ops   # the copies in the peer and slave roots are propagation's
    i = ops.index(("attach", 8, []))
    assert ops[i - 1][0] == "make" and ops[i - 1][2][1] < 0 and ops[i + 1] == ("prop", 8, "shared")


def test_slaves_of_a_group_a_namespace_root_started():
    """A booted container's services (nspawn_boot.yaml): the container's root is a bind of a directory
    /c made shared (its group has no seed: a root starts it), each service's root is a slave of it and
    a service's /var/tmp a shared slave at a directory below: their seeds are binds of that root at
    its own root /c (no member of the master group covers the superblock's root)."""
    ops = plan([M(1, None, "/", sb="r", root="/c", shared=3), M(2, 1, "/mnt", sb="t"),
                M(8, None, "/", sb="r", root="/c", shared=9, master=3), M(10, 8, "/mnt", sb="t"),
                M(11, 8, "/var/tmp", sb="r", root="/c/v/a", shared=12, master=3)])
    seeds = {op[1]: op[2:] for op in ops if op[0] == "seed"}
    src = {op[1]: op[2] for op in ops if op[0] == "make"}
    assert src[8][0] == "node" and seeds[src[8][1]] == ("r", "/c", ("node", 1, "")) and src[8][2] == ""
    assert src[11][0] == "node" and seeds[src[11][1]] == ("r", "/c", ("node", 1, "")) and src[11][2] == "v/a"
    with pytest.raises(construct.PlanError, match=r"^mount 11 \(/var/tmp\): no mount of its master group 3 "
                                                  r"covers /a, the roots of its peer group 12"):
        plan([M(1, None, "/", sb="r", root="/c", shared=3), M(8, None, "/", sb="r", root="/c", master=3),
              M(11, 8, "/var/tmp", sb="r", root="/a", shared=12, master=3)])


def test_round_trip_booted_container_shapes(case, old_kernel):
    """The shapes of a booted nspawn container, in small: a namespace whose root is a bind of a
    directory made shared, with a nested namespace whose root is a slave of it (made shared) holding a
    shared slave bind of a directory below; and under a shared /run-like mount with a slave copy
    elsewhere, mounts made beneath a place a recursive self-bind of a peer covers later (nspawn's
    /run/host, read-only binds of a file beneath it and on it): propagation makes copies beneath the
    cover, which restore finds (and gives their flags) through the directory taken before it was
    covered."""
    setup = """
mkdir -p /mnt/c/old /mnt/c/usr /mnt/c/etc /mnt/c/dev /mnt/c/tmp /mnt/c/run /mnt/c/v/a /mnt/c/.hold /mnt/c/mnt
for d in bin lib lib64 sbin; do if [ -L /$d ]; then cp -P /$d /mnt/c/$d; fi; done
cp -P /.hold/mntcr-hold /mnt/c/.hold/
mount --bind /mnt/c /mnt/c
unshare -m sh -c '
    mount --bind /usr /mnt/c/usr; mount --bind /dev /mnt/c/dev
    cd /mnt/c; pivot_root . old; umount -l /old; cd /
    mount --make-shared /
    mount -t tmpfs run /run; mount --make-shared /run; mkdir -p /run/host/in; touch /run/host/f /run/f
    mount -t tmpfs in /run/host/in; mount --bind /run/f /run/host/f; mount -o remount,bind,ro /run/host/f
    mount --rbind /run/host /run/host; mount -o remount,bind,ro,nosuid /run/host/f
    unshare -m --propagation slave sh -c "
        mount --bind /v/a /tmp; mount --make-shared /tmp; mount --make-shared /
        touch /mnt/ready
        exec /.hold/mntcr-hold 100000" </dev/null >/dev/null 2>&1 &
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /mnt/c/mnt/ready
hold
"""
    pid = case.start(setup)
    before = take(pid)
    pid = case.cr(pid)
    assert_same(before, take(pid))


def test_group_on_a_superblock_restore_does_not_make():
    """mnt_ext_auto.yaml: a peer group of binds of an external mount's directory (no seed: restore does
    not create that superblock) starts with a plain clone made shared; its other member is a bind of
    that one, and so is the first of its shared slave group."""
    ops = construct.plan([M(1, None, "/", sb="r"), M(2, 1, "/usr", sb="x", root="/usr", external="usr"),
                          M(3, 1, "/m/a", sb="x", root="/usr/share", shared=5),
                          M(4, 1, "/m/b", sb="x", root="/usr/share", shared=5),
                          M(6, 1, "/m/c", sb="x", root="/usr/share", shared=7, master=5)],
                         helper_ok=lambda sb: sb != "x")
    assert not [op for op in ops if op[0] == "seed"]
    src = {op[1]: op[2] for op in ops if op[0] == "make"}
    first = 3 if src[3] is None else 4
    assert src[first] is None and src[7 - first] == ("node", first, "") and src[6] == ("node", first, "")


def test_round_trip_external_binds_made_private_then_shared(case, old_kernel):
    """CRIU's mnt_ext_auto: a directory of the external /usr bound, bound again and made private then
    shared, that bound (its peer), bound again as a shared slave and once more as a slave."""
    setup = """
d=/mnt/zdtm; mkdir -p $d/dst $d/ps $d/bind $d/ss $d/slave
mount --bind /usr/share $d/dst; mount --bind $d/dst $d/ps; mount --make-private $d/ps; mount --make-shared $d/ps
mount --bind $d/ps $d/bind; mount --bind $d/bind $d/ss; mount --make-slave $d/ss; mount --make-shared $d/ss
mount --bind $d/ss $d/slave; mount --make-slave $d/slave
hold
"""
    pid = case.start(setup)
    before = take(pid)
    pid = case.cr(pid)
    assert_same(before, take(pid))


def test_shared_mounts_inside_a_user_namespace(case, monkeypatch):
    """A mount namespace owned by a user namespace (rootless container) with peer groups of its own:
    its locked copy of a shared mount made shared again inside (shared+slave), a tmpfs made shared
    there with a bind in its group, and a slave of that. Built while mounting (sharing=construct,
    the flags as this kernel has them): locked mounts first, the namespace copied into its user
    namespace, the rest in the copy. Restored twice, equal (locks included), and a mount made later
    on the host side still propagates in."""
    monkeypatch.setenv("MNTCR_STRATEGY", "sharing=construct")
    setup = """
mkdir -p /mnt/shared /run/c
mount -t tmpfs s /mnt/shared; mount --make-shared /mnt/shared; mkdir /mnt/shared/late
unshare -U -r -m --propagation unchanged sh -c '
    mount --make-shared /mnt/shared
    mount -t tmpfs own /run/c; mount --make-shared /run/c; mkdir /run/c/a /run/c/b /run/c/s
    mount --bind /run/c/a /run/c/b
    mount --bind /run/c /run/c/s; mount --make-slave /run/c/s
    touch /tmp/child-ready
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /tmp/child-ready
hold
"""
    pid = case.start(setup)
    before = take(pid)
    for _ in range(2):
        pid = case.cr(pid)
        assert_same(before, take(pid))
    child = next(p.pid for p in take(pid).snap.procs if p.pid != pid)
    with open(f"/proc/{child}/status") as f:
        inner = next(line.split()[-1] for line in f if line.startswith("NSpid:"))  # its pid in the container
    r = mntcr_sh(pid, f"mount -t tmpfs late /mnt/shared/late; grep -c ' /mnt/shared/late ' /proc/{inner}/mountinfo")
    assert r.strip() == "1", r


def mntcr_sh(pid: int, script: str) -> str:
    """Run script in the mount namespace of host pid `pid` (a throwaway copy: the tree is unchanged),
    with propagation unchanged so that its mounts reach peers and slaves."""
    import subprocess
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "unshare", "-m", "--propagation", "unchanged",
                           "sh", "-c", script], capture_output=True, text=True, check=True).stdout


def test_prestop_check_models_the_user_namespace_copy(case, monkeypatch):
    """The check made before the tree is stopped plans the construction as restore runs it: a
    namespace a user namespace owns is copied into it midway, its locked mounts made before the
    copy, the others in it (the same split engine.userns_cr.construct_copies makes from the image)."""
    from engine import construct, dump, image, strategy, userns_cr
    monkeypatch.setenv("MNTCR_STRATEGY", "sharing=construct")
    strategy.reset()
    monkeypatch.setattr(strategy, "_current", None)   # undone after the test: the next one probes again
    pid = case.start("""
mkdir -p /mnt/shared /run/c
mount -t tmpfs s /mnt/shared; mount --make-shared /mnt/shared
unshare -U -r -m --propagation unchanged sh -c '
    mount -t tmpfs own /run/c; mount --make-shared /run/c; mkdir /run/c/a /run/c/b
    mount --bind /run/c/a /run/c/b
    touch /tmp/child-ready
    exec /.hold/mntcr-hold 100000' </dev/null >/dev/null 2>&1 &
wait_for /tmp/child-ready
hold
""")
    planned = []
    real_plan = construct.plan
    monkeypatch.setattr(construct, "plan", lambda *a, **kw: planned.append(kw.get("userns_copies")) or
                        real_plan(*a, **kw))
    dump._precheck(dump.process_tree(pid), {"/usr": "usr", "/etc": "etc"})
    assert len(planned) == 1
    images = case.new_images_dir()
    case.dump(pid, images)
    from_image = userns_cr.construct_copies(image.load(images)["mntns"])
    assert len(from_image) == 1 and sorted(planned[0].values()) == sorted(from_image.values()), (planned, from_image)
    before, after = next(iter(from_image.values()))
    assert len(before) > 1 and len(after) == 2   # the root and the locked copies; own tmpfs and its bind
