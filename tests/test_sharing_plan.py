"""The sharing planner (engine.sharing.plan) on hand-made trees: order of SET_GROUP / slave / shared."""

import pytest

from engine import sharing


def M(mid, root="/", shared=None, master=None, unbindable=False, mp=None):
    return {"id": mid, "root": root, "shared": shared, "master": master, "unbindable": unbindable,
            "mountpoint": mp or f"/m{mid}"}


def test_private_tree_needs_nothing():
    assert sharing.plan([M(1), M(2, "/a")]) == []


def test_peer_group_made_shared_once_then_copied_from_a_covering_member():
    ops = sharing.plan([M(3, "/a/b", shared=7), M(1, "/", shared=7), M(2, "/a", shared=7)])
    assert ops[0] == ("shared", 1)  # the widest root starts the group
    assert set(ops[1:]) == {("set_group", 1, 2), ("set_group", 1, 3)}
    assert len(ops) == 3


def test_slave_group_copies_parent_then_becomes_slave_then_shared():
    mounts = [M(10, "/", shared=2, master=1), M(11, "/x", shared=2, master=1), M(1, "/", shared=1)]
    ops = sharing.plan(mounts)
    assert ops == [("shared", 1), ("set_group", 1, 10), ("slave", 10), ("shared", 10), ("set_group", 10, 11)]


def test_slave_only_members_each_copy_the_first():
    ops = sharing.plan([M(1, shared=1), M(5, master=1), M(6, master=1)])
    assert ops == [("shared", 1), ("set_group", 1, 5), ("slave", 5), ("set_group", 5, 6)]


def test_parents_first_even_when_listed_last():
    # group 3 is a slave of group 2 which is a slave of group 1; listed backwards
    mounts = [M(30, shared=3, master=2), M(20, shared=2, master=1), M(10, shared=1)]
    ops = sharing.plan(mounts)
    order = [op[-1] if op[0] != "set_group" else op[2] for op in ops]
    assert order.index(10) < order.index(20) < order.index(30)
    assert ("set_group", 10, 20) in ops and ("set_group", 20, 30) in ops


def test_master_group_member_must_cover_the_slave_root():
    mounts = [M(1, "/a", shared=1), M(2, "/b", master=1)]
    with pytest.raises(sharing.PlanError, match=r"mount 2 .*master group 1 covers its root /b"):
        sharing.plan(mounts)


def test_external_master_is_joined_from_the_host():
    ops = sharing.plan([M(4, "/", master=99), M(5, "/", shared=8, master=99)])
    assert ("external", 4, 99) in ops and ("slave", 4) in ops
    assert ("external", 5, 99) in ops and ops.index(("external", 5, 99)) < ops.index(("shared", 5))


def test_unbindable_comes_last():
    ops = sharing.plan([M(1, unbindable=True), M(2, shared=1), M(3, shared=1)])
    assert ops[-1] == ("unbindable", 1)


def test_member_outside_every_wider_root_is_refused_with_its_name():
    with pytest.raises(sharing.PlanError, match=r"mount 2 \(/m2\): no mount of its peer group covers"):
        sharing.plan([M(1, "/a", shared=1), M(2, "/b", shared=1)])


def test_master_cycle_is_refused():
    # a corrupt image: group 1 is a slave of group 2 and 2 of 1
    with pytest.raises(sharing.PlanError, match="cycle"):
        sharing.plan([M(1, shared=1, master=2), M(2, shared=2, master=1)])


def H(mid, root="/", shared=None, master=None, sb="sb-1"):
    return dict(M(mid, root, shared, master), sb=sb)


def test_peers_no_member_covers_start_from_a_helper_of_the_superblock_root():
    ops = sharing.plan([H(1, "/a", shared=1), H(2, "/b", shared=1)], helper_ok=lambda sb: sb == "sb-1")
    assert ops == [("helper", -1, "sb-1"), ("shared", -1), ("set_group", -1, 1), ("set_group", -1, 2),
                   ("drop", -1)]


def test_slave_root_outside_its_masters_gives_the_master_group_a_helper():
    ops = sharing.plan([H(1, "/a", shared=1), H(2, "/b", master=1)], helper_ok=lambda sb: True)
    assert ops == [("helper", -1, "sb-1"), ("shared", -1), ("set_group", -1, 1),
                   ("set_group", -1, 2), ("slave", 2), ("drop", -1)]


def test_helper_groups_chain_up_to_the_master():
    # group 2 (slave of 1) needs a helper: so does group 1, to hand it "/"; group 1's own members cover
    mounts = [H(1, "/a", shared=1), H(2, "/a/x", shared=1), H(3, "/p", shared=2, master=1),
              H(4, "/q", shared=2, master=1)]
    ops = sharing.plan(mounts, helper_ok=lambda sb: True)
    assert ops[:3] == [("helper", -1, "sb-1"), ("shared", -1), ("set_group", -1, 1)]
    assert ("helper", -2, "sb-1") in ops
    i = ops.index(("helper", -2, "sb-1"))
    assert ops[i + 1:i + 4] == [("set_group", -1, -2), ("slave", -2), ("shared", -2)]
    assert {("set_group", -2, 3), ("set_group", -2, 4)} <= set(ops)
    assert ops[-2:] == [("drop", -1), ("drop", -2)]


def test_no_helper_for_an_external_superblock_or_a_root_member():
    # no helper of an outside filesystem's root: the uncovered peer copies from a clone of the
    # first member rooted at its own root (set_group_via)
    ops = sharing.plan([H(1, "/a", shared=1), H(2, "/b", shared=1)], helper_ok=lambda sb: False)
    assert ops == [("shared", 1), ("set_group_via", 1, 2)]
    ops = sharing.plan([H(1, "/a", shared=1), H(2, "/b", master=1)], helper_ok=lambda sb: False)
    assert ops == [("shared", 1), ("set_group_via", 1, 2), ("slave", 2)]
    with pytest.raises(sharing.PlanError, match="no mount of its peer group covers"):
        sharing.plan([H(1, "/a", shared=1), H(2, "/b", shared=1, sb="sb-2")], helper_ok=lambda sb: False)
    ops = sharing.plan([H(1, "/", shared=1), H(2, "/b", shared=1)], helper_ok=lambda sb: True)
    assert not any(op[0] == "helper" for op in ops)


def L(mid, root="/", shared=None, master=None, parent=None, mp=None, locked=None, sb="sb-1"):
    return dict(H(mid, root, shared, master, sb), parent=parent, mountpoint=mp or f"/m{mid}", locked=locked)


def test_source_is_a_member_without_a_locked_mount_beneath_the_target_whatever_the_ids():
    # scenarios/userns/nested_three: L2's slave /run/c (115) and L3's copy of it (58, lower id), whose
    # l2 mount the copy into L3's user namespace locked. SET_GROUP from 58 fails with EINVAL
    # (__has_locked_children), so 115 starts the slave group and gives it to 58.
    mounts = [L(191, shared=1, mp="/run/c"),
              L(58, master=1, mp="/run/c", locked=True), L(59, parent=58, mp="/run/c/l2", locked=True, sb="sb-2"),
              L(115, master=1, mp="/run/c", locked=True), L(46, parent=115, mp="/run/c/l2", sb="sb-2")]
    assert sharing.plan(mounts) == [("shared", 191), ("set_group", 191, 115), ("slave", 115), ("set_group", 115, 58)]
    # the same with the ids the other way round (the order a dump gave before, when it did not fail)
    mounts[1]["id"], mounts[3]["id"] = 115, 58
    mounts[2]["parent"], mounts[4]["parent"] = 115, 58
    assert sharing.plan(mounts) == [("shared", 191), ("set_group", 191, 58), ("slave", 58), ("set_group", 58, 115)]


def test_a_locked_mount_beside_the_target_root_does_not_block():
    # the kernel checks only locked children at or beneath the target's root
    mounts = [L(1, shared=1), L(2, parent=1, mp="/m1/a", locked=True, sb="sb-2"), L(3, "/b", shared=1)]
    assert sharing.plan(mounts) == [("shared", 1), ("set_group", 1, 3)]
    mounts[2]["root"] = "/a"
    with pytest.raises(sharing.PlanError, match=r"mount 3 .*covers its root /a has a locked mount there"):
        sharing.plan(mounts)


def test_only_locked_sources_start_from_a_helper_when_one_can_be_made():
    mounts = [L(1, shared=1), L(2, parent=1, mp="/m1/a", locked=True, sb="sb-2"), L(3, "/a", shared=1)]
    ops = sharing.plan(mounts, helper_ok=lambda sb: sb == "sb-1")
    assert ops == [("helper", -1, "sb-1"), ("shared", -1), ("set_group", -1, 1), ("set_group", -1, 3),
                   ("drop", -1)]
