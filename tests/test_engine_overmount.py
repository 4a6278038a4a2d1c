"""Engine round trips of overmounts: stacks on one mount point, a mount over a parent's mount
point with children beneath, and the namespace's own `/` overmounted.

Files under covered mounts are reached through fds opened before the cover,
so the comparison of what those fds read checks the covered mounts' contents.
"""

from __future__ import annotations

import pytest

from enginecase import case  # noqa: F401  (fixture)

OVERMOUNTS = {
    # three mounts on /mnt/x; fds 5 and 6 on the two covered ones
    "stack": """
mkdir /mnt/x
mount -t tmpfs one /mnt/x; echo 1 > /mnt/x/f; exec 5</mnt/x/f
mount -t tmpfs two /mnt/x; echo 2 > /mnt/x/f; exec 6</mnt/x/f
mount -t tmpfs three /mnt/x; echo 3 > /mnt/x/f
""",
    # /mnt/p has a child /mnt/p/c; then a mount over /mnt/p hides both
    "parent-with-children": """
mkdir /mnt/p; mount -t tmpfs p /mnt/p; mkdir /mnt/p/c /mnt/p/d
mount -t tmpfs c /mnt/p/c; echo in-c > /mnt/p/c/f; exec 5</mnt/p/c/f
mount -t tmpfs d /mnt/p/d; mkdir /mnt/p/d/e; mount -t tmpfs e /mnt/p/d/e
mount -t tmpfs top /mnt/p; echo top > /mnt/p/g
""",
    # a mount over /mnt (a directory of the root tmpfs) hiding a whole subtree
    "grandparent": """
mkdir /mnt/p; mount -t tmpfs p /mnt/p; mkdir /mnt/p/c; mount -t tmpfs c /mnt/p/c
echo deep > /mnt/p/c/f; exec 5</mnt/p/c/f
mount -t tmpfs over /mnt
""",
    # covered and covering mounts of one superblock (binds), stacked twice
    "bind-stack": """
mkdir /mnt/t /mnt/x; mount -t tmpfs t /mnt/t; mkdir /mnt/t/a /mnt/t/b
echo a > /mnt/t/a/f; echo b > /mnt/t/b/f
mount --bind /mnt/t/a /mnt/x; exec 5</mnt/x/f
mount --bind /mnt/t/b /mnt/x
""",
}


@pytest.mark.parametrize("kind", sorted(OVERMOUNTS))
def test_overmount(case, kind):
    before, after = case.roundtrip(OVERMOUNTS[kind] + "hold\n", check="ls -R /mnt; cat /mnt/*/f 2>/dev/null || true")
    covered = [m for m in after.root.mounts
               if any(o.parent_id == m.parent_id and o.mountpoint == m.mountpoint and o.mnt_id != m.mnt_id
                      for o in after.root.mounts) or any(o.parent_id == m.mnt_id and o.mountpoint == m.mountpoint
                                                         for o in after.root.mounts)]
    assert covered or kind == "grandparent"
    assert any(line.startswith("5:") and "file" in line for line in after.fd_data[0])


@pytest.mark.parametrize("how", ["bind", "tmpfs"])
def test_root_overmounted(case, how):
    """`mount --bind / /` (or a tmpfs on /) in the namespace. The process's root stays the
    covered mount: `/` resolves to the mount it was, not to what covers it."""
    cover = "mount --bind / /" if how == "bind" else "mount -t tmpfs newroot /"
    setup = f"""
echo lower > /marker
{cover}
hold
"""
    before, after = case.roundtrip(setup, check="cat /marker; ls /")
    assert "lower" in after.snap.check_output
    # Both mounts are in the tree, one on top of the other at /.
    at_root = [m for m in after.root.mounts if m.mountpoint == "/"]
    assert len(at_root) == 2, at_root
    # ... and the process's root is the namespace's root mount (the covered one), before and after.
    from engine import topology
    for state in (before, after):
        mounts = state.root.mounts
        ids = {m.mnt_id for m in mounts}
        ns_root = next(m for m in mounts if m.parent_id not in ids)
        assert state.root.root == "/ mnt=" + topology.canonical(mounts).label(ns_root.mnt_id)
