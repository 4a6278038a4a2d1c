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

SET_GROUP copies only from a mount whose root covers the target's and that has
no locked child at or beneath the target's root (the kernel's
__has_locked_children: a namespace copied into a less privileged user
namespace locks its mounts), so a member without such children is the source
where there is one, whatever the mount ids say. When no
member of a group covers all the others (peers /a and /b of a superblock
whose "/" mount is gone), or a slave group's root lies outside every member
of its master group, a temporary *helper* mount of the superblock's root
starts the group instead (it covers everything), takes the group's master
and sharing, hands them to the members, and is dropped at the end. Helpers
need a superblock the restore creates (`helper_ok`); the master group of a
group with a helper gets one too (it must cover "/").

The plan is a list of plain tuples so it can be tested without a kernel:
  ("set_group", src_id, dst_id)     copy src's peer group and master onto dst
  ("set_group_via", src_id, dst_id) the same where src's root does not cover dst's: from a clone of
                                    src rooted at dst's root (reached by its file handle, through src),
                                    which is a member of src's group (peers /a and /b of a filesystem
                                    from outside the dump, where no helper of its root can be made)
  ("external", dst_id, master)      copy from the host mount that gives external group `master`
  ("slave", id) / ("shared", id) / ("unbindable", id)
  ("helper", hid, sb)               attach a private mount of superblock sb's root (hid < 0)
  ("drop", hid)                     unmount the helper (its group lives on in the members)
"""

from __future__ import annotations

from engine.image import is_beneath, rel_to


class PlanError(ValueError):
    """The sharing cannot be rebuilt with SET_GROUP (one line naming the mount)."""


def _ancestors(root: str):
    """`root` and each directory above it, deepest first ("/a/b", "/a", "/")."""
    yield root
    while root != "/":
        root = root.rsplit("/", 1)[0] or "/"
        yield root


def _locked_points(mounts) -> dict[int, list[str]]:
    """Mount id -> where its locked children sit, as paths of its superblock (only mounts that have any)."""
    locked = [m for m in mounts if m.get("locked") and m.get("parent") is not None]
    if not locked:
        return {}
    by_id = {m["id"]: m for m in mounts}
    out: dict[int, list[str]] = {}
    for c in locked:
        p = by_id.get(c["parent"])
        if p is not None:
            rel = rel_to(c["mountpoint"], p["mountpoint"])
            out.setdefault(p["id"], []).append(p["root"] if not rel else p["root"].rstrip("/") + "/" + rel)
    return out


def _free(locked: dict[int, list[str]], m: dict, root: str) -> bool:
    """Whether m may give its sharing to a mount rooted at `root`: no locked child of m sits at or
    beneath it (the kernel refuses SET_GROUP, and a clone of m there, with EINVAL otherwise)."""
    return not any(is_beneath(p, root) for p in locked.get(m["id"], ()))


def _no_source(m: dict, what: str, members: list[dict], locked: dict[int, list[str]]) -> PlanError:
    """The refusal for m, which no member of `what` (`members`) can give its sharing to."""
    if locked and _widest([x for x in members if x is not m], m["root"], {}) is not None:
        return PlanError(f"mount {m['id']} ({m['mountpoint']}): each mount of its {what} that covers its root "
                         f"{m['root']} has a locked mount there (copied into a less privileged user namespace), "
                         "which SET_GROUP refuses as a source")
    return PlanError(f"mount {m['id']} ({m['mountpoint']}): no mount of its {what} covers its root {m['root']}")


class _Roots:
    """Members of a group by root, to find a member whose root covers a path in O(depth).
    `locked`: _locked_points; a member with a locked child beneath a target's root is no source for it."""

    def __init__(self, locked: dict[int, list[str]]):
        self.by_root: dict[str, dict] = {}
        self.locked = locked

    def add(self, m: dict) -> None:
        old = self.by_root.setdefault(m["root"], m)
        if old is not m and self.locked.get(old["id"]) and not self.locked.get(m["id"]):
            self.by_root[m["root"]] = m

    def widest_covering(self, root: str) -> dict | None:
        top = self.by_root.get("/")
        if top is not None and (not self.locked or _free(self.locked, top, root)):
            return top   # "/" covers every root and none is wider (most groups of a tree: its plain tmpfs peers)
        best = None
        for r in _ancestors(root):
            m = self.by_root.get(r)
            if m is not None and _free(self.locked, m, root):
                best = m
        return best


def _widest(members: list[dict], root: str, locked: dict[int, list[str]]) -> dict | None:
    roots = _Roots(locked)
    for x in members:
        roots.add(x)
    return roots.widest_covering(root)


def _first_uncovered(members: list[dict], locked: dict[int, list[str]]) -> dict | None:
    """The first member (widest roots first) whose root no earlier member covers, or None."""
    seen = _Roots(locked)
    seen.add(members[0])
    for m in members[1:]:
        if seen.widest_covering(m["root"]) is None:
            return m
        seen.add(m)
    return None


def plan(mounts, helper_ok=lambda sb: False) -> list[tuple]:
    """The ordered operations that give `mounts` (image mount dicts) their propagation.
    `helper_ok(sb)`: whether a helper mount of superblock sb's root can be made."""
    groups: dict[tuple, list[dict]] = {}
    for m in mounts:
        if m.get("shared") or m.get("master"):
            groups.setdefault((m.get("shared"), m.get("master")), []).append(m)
    locked = _locked_points(mounts)
    for key in groups:
        # (among equal roots, members without locked children first: the group's first is a source for the rest)
        groups[key].sort(key=lambda x: (len(x["root"]), x["root"], x["id"] in locked, x["id"]))
    by_shared: dict[int, tuple] = {key[0]: key for key in groups if key[0]}
    children: dict[tuple, list[tuple]] = {}
    for key in groups:
        if key[1] in by_shared:
            children.setdefault(by_shared[key[1]], []).append(key)

    # Which groups start with a helper: decided before any is set up (a helper must come first).
    need: dict[tuple, bool] = {}

    def needs(key: tuple, path: tuple = ()) -> bool:
        if key in need:
            return need[key]
        if key in path:
            raise PlanError(f"peer group {key[0]} is its own master through a cycle")
        members = groups[key]
        kids = [(c, needs(c, path + (key,))) for c in children.get(key, ())]
        sbs = {x.get("sb") for x in members}
        top = members[0]["root"] == "/" and members[0]["id"] not in locked   # (a "/" member covers every root)
        if top or len(sbs) != 1 or not helper_ok(members[0].get("sb")):
            need[key] = False
        else:
            need[key] = (_first_uncovered(members, locked) is not None
                         or any(k or _widest(members, groups[c][0]["root"], locked) is None for c, k in kids))
        return need[key]

    for key in groups:
        needs(key)

    ops: list[tuple] = []
    state: dict[tuple, int] = {}  # 1 in progress, 2 done
    helper_of: dict[tuple, dict] = {}

    def setup(key: tuple) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise PlanError(f"peer group {key[0]} is its own master through a cycle")
        state[key] = 1
        shared, master = key
        members = groups[key]
        if need[key]:
            first = {"id": -1 - len(helper_of), "root": "/", "sb": members[0].get("sb"),
                     "mountpoint": f"(helper for peer group {shared or master})"}
            helper_of[key] = first
            ops.append(("helper", first["id"], first["sb"]))
            rest = members
        else:
            first, rest = members[0], members[1:]
        if master:
            pkey = by_shared.get(master)
            if pkey is not None:
                setup(pkey)
                src = _widest(groups[pkey] + ([helper_of[pkey]] if pkey in helper_of else []), first["root"], locked)
                if src is not None:
                    ops.append(("set_group", src["id"], first["id"]))
                else:
                    beside = next((x for x in groups[pkey] if x.get("sb") is not None
                                   and x.get("sb") == first.get("sb") and _free(locked, x, first["root"])), None)
                    if beside is None or first["id"] < 0:
                        raise _no_source(first, f"master group {master}", groups[pkey], locked)
                    ops.append(("set_group_via", beside["id"], first["id"]))
            else:
                ops.append(("external", first["id"], master))
            ops.append(("slave", first["id"]))
        if shared:
            ops.append(("shared", first["id"]))
        seen = _Roots(locked)
        seen.add(first)
        for m in rest:
            src = seen.widest_covering(m["root"])
            seen.add(m)
            if src is not None:
                ops.append(("set_group", src["id"], m["id"]))
            elif m.get("sb") is not None and m.get("sb") == first.get("sb") and _free(locked, first, m["root"]):
                ops.append(("set_group_via", first["id"], m["id"]))
            else:
                raise _no_source(m, "peer group", members, locked)
        state[key] = 2

    for key in sorted(groups, key=lambda k: (k[0] or 0, k[1] or 0)):
        setup(key)
    for h in helper_of.values():
        ops.append(("drop", h["id"]))
    for m in mounts:
        if m.get("unbindable"):
            ops.append(("unbindable", m["id"]))
    return ops
