"""dump's check of external slavery (engine.dump._check_sharing) on hand-made mount tables, no kernel."""

import pytest

from engine import dump


def M(mid, mp, root="/", sb="s1", master=None, shared=None, external=False, fstype="tmpfs"):
    return {"id": mid, "mountpoint": mp, "root": root, "sb": sb, "master": master, "shared": shared,
            "external": external, "fstype": fstype, "unbindable": False}


def test_peers_with_an_outside_master_and_no_covering_member_are_refused_by_name():
    # CRIU's mnt_ext_multiple: /a and /b of one tmpfs, both slaves of a group outside the dump; no member
    # covers the other, so the plan starts the group from a helper of the superblock's root.
    mounts = [M(1, "/", sb="root"), M(2, "/t/dst_a", root="/a", master=7), M(3, "/t/dst_b", root="/b", master=7)]
    sbs = {"root": {"external": False}, "s1": {"external": False}}
    with pytest.raises(dump.DumpError, match=r"mount 2 \(/t/dst_a\) on tmpfs: a slave of peer group 7, which lies "
                                             r"outside the dumped namespaces"):
        dump._check_sharing({"m0": {"mounts": mounts}}, sbs)


def test_declared_external_member_lets_the_outside_master_through():
    mounts = [M(1, "/", sb="root"), M(2, "/t/dst_a", root="/a", master=7, external=True)]
    sbs = {"root": {"external": False}, "s1": {"external": True}}
    dump._check_sharing({"m0": {"mounts": mounts}}, sbs)
