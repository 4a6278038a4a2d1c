"""engine.topology: the tree model, canonical comparison up to renaming, and the diff report."""

from __future__ import annotations

import itertools
import pathlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import mountinfo, topology
from engine.mountinfo import Mount

DATA = pathlib.Path(__file__).parent / "data"


def M(mnt_id, parent, mp, dev=1, root="/", fstype="tmpfs", source="tmpfs", opts="rw,relatime", sopts="rw",
      shared=None, master=None, pfrom=None, unb=False, major=0):
    return Mount(mnt_id=mnt_id, parent_id=parent, major=major, minor=dev, root=root, mountpoint=mp,
                 mount_opts=tuple(opts.split(",")), fstype=fstype, source=source, super_opts=tuple(sopts.split(",")),
                 shared=shared, master=master, propagate_from=pfrom, unbindable=unb)


def renumber(mounts, rng: random.Random):
    """The same tree with new mount ids, peer-group ids, devices and a shuffled line order."""
    ids = {m.mnt_id for m in mounts} | {m.parent_id for m in mounts}
    new_ids = rng.sample(range(1000, 100000), len(ids))
    idmap = dict(zip(sorted(ids), new_ids))
    groups = {g for m in mounts for g in (m.shared, m.master, m.propagate_from) if g is not None}
    gmap = dict(zip(sorted(groups), rng.sample(range(1, 100000), len(groups))))
    devs = sorted({(m.major, m.minor) for m in mounts})
    dmap = dict(zip(devs, [(rng.randrange(0, 300), n) for n in rng.sample(range(100000), len(devs))]))
    out = []
    for m in mounts:
        major, minor = dmap[(m.major, m.minor)]
        out.append(m.with_(mnt_id=idmap[m.mnt_id], parent_id=idmap[m.parent_id], major=major, minor=minor,
                           shared=gmap.get(m.shared), master=gmap.get(m.master),
                           propagate_from=gmap.get(m.propagate_from)))
    rng.shuffle(out)
    return out, idmap


def base_tree():
    """A small tree with every relation the comparison must track."""
    return [
        M(1, 0, "/", dev=1, major=8, fstype="ext4", source="/dev/sda1", shared=1),
        M(2, 1, "/a", dev=10, shared=2),
        M(3, 1, "/b", dev=10, root="/x", shared=2),          # peer of /a, same superblock
        M(4, 1, "/c", dev=11, shared=3, master=2),           # shared + slave
        M(5, 1, "/d", dev=12, master=2),                     # plain slave
        M(6, 1, "/e", dev=13, master=9, pfrom=1),            # external master, propagate_from the root's group
        M(7, 1, "/f", dev=14, unb=True),
        M(8, 7, "/f/g", dev=15, fstype="proc", source="proc", opts="rw,nosuid"),
        M(9, 1, "/h", dev=16, shared=4),
        M(10, 1, "/i", dev=17, shared=5),
        M(11, 1, "/j", dev=18, shared=3, master=2),          # second member of group 3
        M(12, 2, "/a", dev=19),                              # overmount of /a
    ]


def _change(mounts, mnt_id, **kw):
    return [m.with_(**kw) if m.mnt_id == mnt_id else m for m in mounts]


MUTATIONS = {
    "mount added": (lambda t: t + [M(20, 7, "/f/new", dev=30)], ["+", "/f/new", "1 only in B"]),
    "mount dropped": (lambda t: [m for m in t if m.mnt_id != 8], ["-", "/f/g", "1 only in A"]),
    "mountpoint moved": (lambda t: _change(t, 8, mountpoint="/f/moved"), ["mountpoint: /f/g -> /f/moved"]),
    "root changed": (lambda t: _change(t, 3, root="/y"), ["root: /x -> /y"]),
    "fstype changed": (lambda t: _change(t, 8, fstype="sysfs"), ["fstype: proc -> sysfs"]),
    "source changed": (lambda t: _change(t, 5, source="other"), ["source: tmpfs -> other"]),
    "mount option changed": (lambda t: _change(t, 5, mount_opts=("ro", "relatime")),
                             ["options: rw,relatime -> ro,relatime"]),
    "superblock option changed": (lambda t: _change(t, 5, super_opts=("rw", "size=4k")),
                                  ["superblock options: rw -> rw,size=4k"]),
    "peer groups merged": (lambda t: _change(t, 10, shared=4), ["peer group: {/i} -> {/h, /i}"]),
    "peer group split": (lambda t: _change(t, 11, shared=6), ["peer group: {/c, /j} -> {/j}"]),
    "master lost on shared+slave": (lambda t: _change(t, 4, master=None), ["master: master:", "-> no master"]),
    "master changed": (lambda t: _change(t, 5, master=3), ["master group", "/d"]),
    "propagate_from changed": (lambda t: _change(t, 6, propagate_from=2), ["propagate_from group", "/e"]),
    "unbindable lost": (lambda t: _change(t, 7, unbindable=False), ["unbindable: True -> False"]),
    "superblock split": (lambda t: _change(t, 3, minor=40), ["superblock shared with: {/a#1, /b} -> {/b}"]),
}


# --- Tree -------------------------------------------------------------------------

def test_tree_structure_of_talk_listing():
    tree = topology.Tree(mountinfo.read_file(str(DATA / "talk-reparenting-after.mountinfo")))
    assert [m.mnt_id for m in tree.roots] == [644]
    stacks = sorted([m.mnt_id for m in s] for s in tree.stacks())
    assert stacks == [[645, 749, 646, 648], [750, 647, 748]]
    assert tree.overmount[645].mnt_id == 749
    assert sorted(m.mnt_id for m in tree.peer_groups[19]) == [644, 645, 646, 647, 648, 748, 749, 750]
    assert list(tree.superblocks) == [(0, 59)]
    pos = {m.mnt_id: i for i, m in enumerate(tree.order)}
    for m in tree.mounts:
        p = tree.parent(m)
        if p is not None:
            assert pos[p.mnt_id] < pos[m.mnt_id]
            assert tree.depth[m.mnt_id] == tree.depth[p.mnt_id] + 1


def test_tree_external_masters_and_groups():
    tree = topology.Tree(mountinfo.read_file(str(DATA / "lxc-vivid-container.mountinfo")))
    assert tree.external_groups == {1, 8, 11, 23, 25}
    assert [m.mnt_id for m in tree.roots] == [44]  # parent 45 is not in the listing
    assert [m.mnt_id for m in tree.children[81]] == [80]  # child listed before its parent
    t2 = topology.Tree(base_tree())
    assert t2.group_masters()[3] == {2} and t2.group_masters()[2] == set()
    assert sorted(m.mnt_id for m in t2.slaves[2]) == [4, 5, 11]
    assert [m.mnt_id for m in t2.propagated[1]] == [6]
    assert t2.external_groups == {9}
    assert sorted(m.mnt_id for m in t2.superblocks[(0, 10)]) == [2, 3]


def test_tree_sibling_order_deeper_mountpoints_first():
    mounts = [M(1, 0, "/"), M(2, 1, "/a"), M(3, 1, "/a/b/c"), M(4, 1, "/"), M(5, 1, "/a/b")]
    order = [m.mnt_id for m in topology.Tree(mounts).order]
    assert order == [1, 3, 5, 2, 4]  # /a/b/c is placed before /a/b and /a hide it; the overmount last


def test_tree_rejects_cycles_and_duplicates():
    with pytest.raises(ValueError, match="cycle"):
        topology.Tree([M(1, 0, "/"), M(2, 3, "/a"), M(3, 2, "/a/b")])
    with pytest.raises(ValueError, match="duplicate mount id 2"):
        topology.Tree([M(1, 0, "/"), M(2, 1, "/a"), M(2, 1, "/b")])


@pytest.mark.parametrize("shape", ["chain", "wide"])
def test_large_trees(shape):
    n = 10000
    if shape == "chain":  # a 10,000-deep overmount stack: no recursion anywhere
        mounts = [M(1, 0, "/")] + [M(i, i - 1, "/", dev=i) for i in range(2, n + 1)]
    else:
        mounts = [M(1, 0, "/")] + [M(i, 1, f"/m{i}", dev=i % 50, shared=i % 7 or None) for i in range(2, n + 1)]
    tree = topology.Tree(mounts)
    assert len(tree.order) == n
    c = topology.canonical(tree)
    assert len(c.text.splitlines()) == n
    renamed, _ = renumber(mounts, random.Random(1))
    assert topology.canonical(renamed).text == c.text
    assert topology.diff_report(mounts, renamed)[0]
    changed = _change(mounts, n // 2, mount_opts=("ro",))
    equal, report = topology.diff_report(mounts, changed)
    assert not equal and "options: rw,relatime -> ro" in report


# --- invariance -------------------------------------------------------------------

def _sources():
    yield "base", base_tree()
    for p in sorted(DATA.glob("*.mountinfo")):
        yield p.name, mountinfo.read_file(str(p))
    yield "self", mountinfo.read_pid("self")


@pytest.mark.parametrize("name, mounts", list(_sources()), ids=[n for n, _ in _sources()])
def test_canonical_invariant_under_renumbering(name, mounts):
    c = topology.canonical(mounts)
    rng = random.Random(name)
    for _ in range(20):
        renamed, idmap = renumber(mounts, rng)
        c2 = topology.canonical(renamed)
        assert c2.text == c.text
        for m in mounts:
            assert c2.label(idmap[m.mnt_id]) == c.label(m.mnt_id)
        equal, report = topology.diff_report(mounts, renamed)
        assert equal and "equal" in report


def test_labels_are_readable_and_unique():
    c = topology.canonical(mountinfo.read_file(str(DATA / "talk-reparenting-after.mountinfo")))
    labels = sorted(c.labels.values())
    assert len(set(labels)) == 8
    assert "/tmp/testdir" in labels and "/tmp/testdir/b#4" in labels and "/tmp/testdir/a#3" in labels
    with pytest.raises(KeyError, match="mount 1 is not in the tree"):
        c.label(1)


# --- ties between identical siblings --------------------------------------------------

def _tie_tree(x1_group, x2_group):
    # /p has two identical children at /p/x (a stack of equal siblings, as old kernels could
    # leave behind); they differ only in which other mount they are peers with.
    return [M(1, 0, "/", dev=1), M(2, 1, "/p", dev=2),
            M(3, 2, "/p/x", dev=3, shared=x1_group), M(4, 2, "/p/x", dev=3, shared=x2_group),
            M(5, 1, "/q", dev=3, shared=10), M(6, 1, "/r", dev=3, shared=20)]


def test_tied_siblings_all_line_orders_same_text():
    mounts = _tie_tree(10, 20)
    texts = {topology.canonical(list(p)).text for p in itertools.permutations(mounts)}
    assert len(texts) == 1


def test_tied_siblings_swapped_groups_equal_but_different_groups_not():
    assert topology.diff_report(_tie_tree(10, 20), _tie_tree(20, 10))[0]
    equal, report = topology.diff_report(_tie_tree(10, 20), _tie_tree(10, 10))
    assert not equal and "peer group" in report


def _cross_tree(pairing):
    # Two identical subtrees /s (twice, stacked siblings) each with /s/x and /s/y;
    # "cross" pairs x of one with y of the other, "straight" pairs x with x.
    a, b = {"cross": ((1, 2), (2, 1)), "straight": ((1, 2), (1, 2))}[pairing]
    return [M(1, 0, "/"), M(2, 1, "/s", dev=2), M(3, 1, "/s", dev=2),
            M(4, 2, "/s/x", dev=4, shared=a[0]), M(5, 2, "/s/y", dev=4, shared=a[1]),
            M(6, 3, "/s/x", dev=4, shared=b[0]), M(7, 3, "/s/y", dev=4, shared=b[1])]


@pytest.mark.parametrize("pairing", ["cross", "straight"])
def test_tied_subtrees_invariant(pairing):
    mounts = _cross_tree(pairing)
    rng = random.Random(pairing)
    text = topology.canonical(mounts).text
    for _ in range(50):
        assert topology.canonical(renumber(mounts, rng)[0]).text == text


def test_tied_subtrees_cross_vs_straight_differ():
    assert not topology.diff_report(_cross_tree("cross"), _cross_tree("straight"))[0]


def test_tied_siblings_superblock_sharing():
    a = [M(1, 0, "/"), M(2, 1, "/x", dev=5), M(3, 1, "/x", dev=6), M(4, 1, "/q", dev=5)]
    b = [M(1, 0, "/"), M(2, 1, "/x", dev=6), M(3, 1, "/x", dev=5), M(4, 1, "/q", dev=5)]
    c = [M(1, 0, "/"), M(2, 1, "/x", dev=5), M(3, 1, "/x", dev=5), M(4, 1, "/q", dev=5)]
    assert topology.diff_report(a, b)[0]
    assert not topology.diff_report(a, c)[0]


# --- single mutations ----------------------------------------------------------------

@pytest.mark.parametrize("name", list(MUTATIONS))
def test_detects_each_single_mutation(name):
    mutate, expected = MUTATIONS[name]
    base = base_tree()
    mutated = mutate(base_tree())
    # Renumber the mutated side too: detection must not depend on ids lining up.
    renamed, _ = renumber(mutated, random.Random(name))
    assert topology.canonical(base).text != topology.canonical(renamed).text
    equal, report = topology.diff_report(base, renamed, names=("before", "after"))
    assert not equal
    assert report.startswith("different:")
    for s in expected:
        assert s in report, f"{s!r} missing from:\n{report}"
    # Exactly the mutated mounts are marked: everything else stays unmarked or folded.
    rows = report.splitlines()[5:]  # after the header, legend and column titles
    marked = [line for line in rows if line[:1] in "!-+" and not line.startswith("!   * ")]
    details = [line for line in rows if line.startswith("!   * ")]
    assert 1 <= len(marked) <= 3, report
    assert len(details) >= len([line for line in marked if line.startswith("!")])


def test_diff_report_shape():
    base = base_tree()
    equal, report = topology.diff_report(base, _change(base, 8, root="/sub"), names=("X", "Y"))
    assert not equal
    lines = report.splitlines()
    assert lines[1] == "A = X" and lines[2] == "B = Y"
    mark = next(i for i, line in enumerate(lines) if line.startswith("!") and "/f/g" in line)
    assert lines[mark + 1] == "!   * root: / -> /sub"
    assert sum(1 for line in lines if line.startswith("!")) == 2  # the mount and its one attribute
    # Unchanged subtrees are folded to one line, the path to the change is shown.
    assert any(line.startswith("  ") and "/f" in line for line in lines)
    assert not any("/a" in line and line.startswith("!") for line in lines)


# --- property-based ---------------------------------------------------------------------

@st.composite
def random_trees(draw, max_mounts=10):
    n = draw(st.integers(1, max_mounts))
    mounts: list[Mount] = []
    for i in range(n):
        if i == 0:
            parent, mp = 0, "/"
        else:
            parent = draw(st.integers(1, i))
            pmp = mounts[parent - 1].mountpoint
            step = draw(st.sampled_from(["", "a", "b"]))  # "" stacks on the parent's mountpoint
            mp = pmp if not step else pmp.rstrip("/") + "/" + step
        shared = draw(st.none() | st.integers(1, 3))
        master = draw(st.none() | st.integers(1, 4))
        if master == shared:
            master = None
        pfrom = draw(st.none() | st.integers(1, 4)) if master is not None else None
        if pfrom == master:
            pfrom = None
        mounts.append(M(i + 1, parent, mp, dev=draw(st.integers(1, 4)), root=draw(st.sampled_from(["/", "/x"])),
                        opts=draw(st.sampled_from(["rw", "ro"])), shared=shared, master=master, pfrom=pfrom,
                        unb=draw(st.booleans())))
    return mounts


_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(mounts=random_trees(), seed=st.integers(0, 2**32))
def test_property_renumbered_trees_are_equal(mounts, seed):
    renamed, idmap = renumber(mounts, random.Random(seed))
    ca, cb = topology.canonical(mounts), topology.canonical(renamed)
    assert ca.text == cb.text
    equal, report = topology.diff_report(mounts, renamed)
    assert equal, report


def _group_ids(mounts):
    return {g for m in mounts for g in (m.shared, m.master, m.propagate_from) if g is not None}


@st.composite
def mutated_trees(draw):
    """(tree, mutation name, mutated tree) where the mutation provably changes the tree up to renaming."""
    mounts = draw(random_trees())
    kinds = ["add", "attr", "unbindable"]
    leaves = [m for m in mounts if m.mnt_id != 1 and not any(c.parent_id == m.mnt_id for c in mounts)]
    if leaves:
        kinds.append("drop")
    shared = sorted({m.shared for m in mounts if m.shared is not None})
    if len(shared) >= 2:
        kinds.append("merge")
    if any(sum(1 for m in mounts if m.shared == g) >= 2 for g in shared):
        kinds.append("split")
    if any(m.shared is not None and m.master is not None for m in mounts):
        kinds.append("master lost")
    if any(sum(1 for x in mounts if x.minor == m.minor) >= 2 for m in mounts):
        kinds.append("sb split")
    kind = draw(st.sampled_from(kinds))
    fresh = max(_group_ids(mounts) | {0}) + 1
    if kind == "add":
        p = draw(st.sampled_from(mounts))
        new = mounts + [M(100, p.mnt_id, p.mountpoint.rstrip("/") + "/new")]
    elif kind == "drop":
        victim = draw(st.sampled_from(leaves))
        new = [m for m in mounts if m is not victim]
    elif kind == "attr":
        victim = draw(st.sampled_from(mounts))
        field = draw(st.sampled_from(["mountpoint", "root", "fstype", "source", "mount_opts", "super_opts"]))
        value = ("zz-mutated",) if field in ("mount_opts", "super_opts") else "/zz-mutated"
        new = _change(mounts, victim.mnt_id, **{field: value})
    elif kind == "unbindable":
        victim = draw(st.sampled_from(mounts))
        new = _change(mounts, victim.mnt_id, unbindable=not victim.unbindable)
    elif kind == "merge":
        g1, g2 = draw(st.permutations(shared))[:2]
        new = [m.with_(shared=g1) if m.shared == g2 else m for m in mounts]
    elif kind == "split":
        g = draw(st.sampled_from([g for g in shared if sum(1 for m in mounts if m.shared == g) >= 2]))
        victim = draw(st.sampled_from([m for m in mounts if m.shared == g]))
        new = _change(mounts, victim.mnt_id, shared=fresh)
    elif kind == "master lost":
        victim = draw(st.sampled_from([m for m in mounts if m.shared is not None and m.master is not None]))
        new = _change(mounts, victim.mnt_id, master=None, propagate_from=None)
    else:  # sb split
        victim = draw(st.sampled_from([m for m in mounts if sum(1 for x in mounts if x.minor == m.minor) >= 2]))
        new = _change(mounts, victim.mnt_id, minor=99)
    return mounts, kind, new


@_settings
@given(case=mutated_trees(), seed=st.integers(0, 2**32))
def test_property_single_mutation_detected(case, seed):
    mounts, kind, mutated = case
    renamed, _ = renumber(mutated, random.Random(seed))
    equal, report = topology.diff_report(mounts, renamed)
    assert not equal, kind
    assert report.startswith("different:")


@_settings
@given(mounts=random_trees(), seed=st.integers(0, 2**32))
def test_property_master_changed_to_used_group_detected(mounts, seed):
    # Moving a slave to a master that is already referenced elsewhere, away from one that
    # stays referenced, changes how many mounts follow each group: never a renaming.
    slaves = [m for m in mounts if m.master is not None]
    if not slaves:
        return
    victim = slaves[seed % len(slaves)]
    fresh = max(_group_ids(mounts)) + 1
    mutated = _change(mounts, victim.mnt_id, master=fresh, propagate_from=None)
    still_used = any(g == victim.master for m in mutated for g in (m.shared, m.master, m.propagate_from))
    if not still_used:
        return  # renaming a private master of one mount is not a change
    assert not topology.diff_report(mounts, renumber(mutated, random.Random(seed))[0])[0]


# --- rendering ------------------------------------------------------------------------

def test_render_tree_annotates_propagation_and_stacks():
    text = topology.render_tree(base_tree())
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "TARGET", "SOURCE", "FSTYPE", "OPTIONS", "PROPAGATION"]
    row = {line.split()[0]: line for line in lines[1:] if line.split()[0].isdigit()}
    assert "shared:3 master:2" in row["4"]
    assert "master:9 propagate_from:1" in row["6"]
    assert "unbindable" in row["7"] and "private" in row["8"]
    assert "[covered by 12]" in row["2"] and "[on top of 2]" in row["12"]
    assert "└─/f/g" in row["8"]
    assert "tmpfs[/x]" in row["3"]
    assert "external masters (no member in this tree): 9" in text


def test_tied_siblings_in_two_member_groups():
    # 40 identical siblings, peer groups of two spread over them: refinement cannot tell
    # them apart, the greedy pick keeps partners together whatever the line order.
    mounts = [M(1, 0, "/")] + [M(i, 1, "/x", dev=i // 2, shared=i // 2) for i in range(2, 42)]
    text = topology.canonical(mounts).text
    rng = random.Random(7)
    for _ in range(30):
        assert topology.canonical(renumber(mounts, rng)[0]).text == text
    # Groups of two vs one group of three and one of one: different.
    regrouped = _change(mounts, 3, shared=2)
    assert not topology.diff_report(mounts, regrouped)[0]
