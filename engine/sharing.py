"""The sharing planner: which MOVE_MOUNT_SET_GROUP / make-slave / make-shared steps rebuild peer groups.

Peer groups and master links can only be inherited, never named. With every
mount already in place and private, the plan (from the mounts-v2 talk):

- group mounts by (shared id, master id);
- a group's parent is the group whose shared id is its master id; a master id
  no mount in the image has as its shared id is an *external* master;
- walk groups parents first. For the group's first mount (the one with the
  widest root): copy the parent group's sharing from a parent mount whose root
  covers its root (SET_GROUP makes it a peer of that group), make it slave (it
  leaves the group, keeping it as master), then make it shared if it was
  (a new group). Each other member copies the sharing of an earlier member
  whose root covers its root;
- unbindable last.

The plan is a list of plain tuples so it can be tested without a kernel:
  ("set_group", src_id, dst_id)     copy src's peer group and master onto dst
  ("external", dst_id, master)      copy from the host mount that gives external group `master`
  ("slave", id) / ("shared", id) / ("unbindable", id)
"""

from __future__ import annotations



class PlanError(ValueError):
    """The sharing cannot be rebuilt with SET_GROUP (one line naming the mount)."""


def _ancestors(root: str):
    """`root` and each directory above it, deepest first ("/a/b", "/a", "/")."""
    yield root
    while root != "/":
        root = root.rsplit("/", 1)[0] or "/"
        yield root


class _Roots:
    """Members of a group by root, to find a member whose root covers a path in O(depth)."""

    def __init__(self):
        self.by_root: dict[str, dict] = {}

    def add(self, m: dict) -> None:
        self.by_root.setdefault(m["root"], m)

    def widest_covering(self, root: str) -> dict | None:
        best = None
        for r in _ancestors(root):
            if r in self.by_root:
                best = self.by_root[r]
        return best


def _widest(members: list[dict], root: str) -> dict | None:
    roots = _Roots()
    for x in members:
        roots.add(x)
    return roots.widest_covering(root)


def plan(mounts) -> list[tuple]:
    """The ordered operations that give `mounts` (image mount dicts) their propagation."""
    groups: dict[tuple, list[dict]] = {}
    for m in mounts:
        if m.get("shared") or m.get("master"):
            groups.setdefault((m.get("shared"), m.get("master")), []).append(m)
    by_shared: dict[int, tuple] = {key[0]: key for key in groups if key[0]}
    ops: list[tuple] = []
    state: dict[tuple, int] = {}  # 1 in progress, 2 done

    def setup(key: tuple) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise PlanError(f"peer group {key[0]} is its own master through a cycle")
        state[key] = 1
        shared, master = key
        members = sorted(groups[key], key=lambda x: (len(x["root"]), x["root"], x["id"]))
        first = members[0]
        if master:
            pkey = by_shared.get(master)
            if pkey is not None:
                setup(pkey)
                src = _widest(groups[pkey], first["root"])
                if src is None:
                    raise PlanError(f"mount {first['id']} ({first['mountpoint']}): no mount of its master group "
                                    f"{master} covers its root {first['root']}")
                ops.append(("set_group", src["id"], first["id"]))
            else:
                ops.append(("external", first["id"], master))
            ops.append(("slave", first["id"]))
        if shared:
            ops.append(("shared", first["id"]))
        seen = _Roots()
        seen.add(first)
        for m in members[1:]:
            src = seen.widest_covering(m["root"])
            seen.add(m)
            if src is None:
                raise PlanError(f"mount {m['id']} ({m['mountpoint']}): no mount of its peer group covers its "
                                f"root {m['root']}")
            ops.append(("set_group", src["id"], m["id"]))
        state[key] = 2

    for key in sorted(groups, key=lambda k: (k[0] or 0, k[1] or 0)):
        setup(key)
    for m in mounts:
        if m.get("unbindable"):
            ops.append(("unbindable", m["id"]))
    return ops
