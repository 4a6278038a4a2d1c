"""Peer groups and masters by construction (strategy sharing=construct: no MOVE_MOUNT_SET_GROUP, Linux < 5.15).

Without MOVE_MOUNT_SET_GROUP a mount can only *inherit* its peer group and
master, when it is made (mounts-migration-talk.txt): a bind of a shared
mount joins the group, a bind of a slave is a slave of the same master, and
a mount attached under a shared parent is made shared and copied into every
peer and slave of that parent. So restore builds each mount in the group it
ends up in, in an order where propagation makes exactly the mounts the image
has, and never one more:

- a peer group's first mount to be made gets a *seed*: a temporary mount of
  its superblock's root, attached in the service namespace's yard and made
  shared (a slave group's seed is a bind of its master's seed, made slave,
  then shared; where a namespace root started the master group, at a
  directory, a bind of that root at its root). Members are binds of their
  group's seed, so they are in the group before they are attached;
- mounts are attached parents first, in an order found from the tree alone
  (which mounts must wait for which, so that propagation makes the copies the
  image has and no other; then depth and path), never from mount ids: before
  Linux 6.8 the kernel reuses freed ids, so their order is not the order the
  mounts were made in. When a
  step would make propagation copy the mount somewhere, the copy must be a
  mount of the image not made yet (at that place, same superblock and root):
  it is *adopted*, not made again (where a mount attached before covers its
  place, found through the directory opened before that cover). A step whose
  copy the image lacks, or that would slide a copy beneath a mount already
  there, is put off, and a later mount is tried first;
- right after each step the new mount and its copies get the propagation the
  image gives them (make private, make slave of the current group, make
  shared) when that reaches it; the seeds are made private and dropped at
  the end (their group lives on in the members), and so are the copies that
  propagation made inside them.

The planner simulates the kernel's propagation (fs/pnode.c: peers, slave
groups, copies only where the member's root covers the mount point) over
every mount it has made, seeds and their copies included, so the same plan is
checked at dump (a tree it cannot build is refused while it keeps running)
and executed at restore. Groups it cannot build this way (copies the image
lacks whatever the order, "reparenting" under a shared parent, a peer of a
group outside the image) are refused, naming the mount; Linux >= 5.15
restores them with MOVE_MOUNT_SET_GROUP.

The plan is a list of tuples (ids < 0 are seeds):
  ("seed", sid, sb, root, src)   attach a seed in the yard; src None: the superblock's root,
                                 ("source", id, "") a mount of it shown with mount id's source,
                                 ("node", id, rel) a bind of made mount id, ("ext", id, rel) of
                                 the host mount of external mount id
  ("make", id, src)              clone mount id (src as above; None: a plain private clone)
  ("attach", id, [copy ids])     attach it (a namespace root: make the namespace); the copies
                                 propagation makes appear with it
  ("prop", id, "private" | "slave" | "shared")
  ("drop", sid)                  make the seed private and unmount it
  ("nscopy", id, root)           make the namespace of root mount id a copy of the namespace of
                                 root mount `root` (which holds only that root yet): its root is a
                                 peer of `root`
  ("userns", ns)                 copy namespace ns from inside its user namespace (which locks what
                                 is in it: its root and locked mounts, made by then) and go on in the
                                 copy; in it a shared mount is a slave of its old group
  ("lockseed", sid, id)          seed sid carries the flag locks of mount id (an unlocked mount with
                                 locked flags, engine.userns_cr): cloned inside its user namespace from
                                 a locked copy before it is attached, so the binds of it inherit them
  ("member", id, src)            locked mount id below an unlocked one (a recursive bind made inside
                                 a user namespace, engine.userns_cr.lock_groups) came with it: made
                                 with that mount's clone, attached with its attach; src: what is
                                 copied into the user namespace for it (as in "make": a bind of a
                                 mount of its master group, or None)
"""

from __future__ import annotations

import heapq
from engine.records import record


class PlanError(ValueError):
    """The tree cannot be built without MOVE_MOUNT_SET_GROUP (one line naming a mount)."""


_NEED = "; Linux >= 5.15 restores it with MOVE_MOUNT_SET_GROUP"


def _rel(path: str, base: str) -> str:
    """`path` relative to `base` ("" when equal); None when not beneath it."""
    if path == base:
        return ""
    prefix = base.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def _join(base: str, rel: str) -> str:
    return base if not rel else base.rstrip("/") + "/" + rel


def _common_root(roots: list[str]) -> str:
    """The deepest directory that is or holds each of `roots` (absolute paths)."""
    parts = [[p for p in r.split("/") if p] for r in roots]
    common = []
    for names in zip(*parts):
        if any(n != names[0] for n in names):
            break
        common.append(names[0])
    return "/" + "/".join(common)


@record
class _Node:
    id: int
    sb: object
    root: str
    mountpoint: str | None   # None: not in a restored tree (seed, copy inside a seed, host mount)
    real: bool               # a mount of the image
    source: bool = False     # a seed or a host mount: the first choice to bind a member from
    name: object = None      # the source mountinfo shows (a bind keeps it; None: any, restore gives it)


class _State:
    """The simulated kernel state: each made mount's (peer group, master group) as tokens, with an
    undo journal so a step that fails can be taken back."""

    def __init__(self):
        self.nodes: dict[int, _Node] = {}
        self.ks: dict[int, object] = {}      # node -> peer group token or None
        self.km: dict[int, object] = {}      # node -> master group token or None
        self.members: dict[object, set] = {}
        self.slaves: dict[object, set] = {}
        # The same for source nodes only (seeds, host mounts): few, so a bind finds one without
        # going through a whole group.
        self.src_members: dict[object, set] = {}
        self.src_slaves: dict[object, set] = {}
        self.bind: dict[int, object] = {}    # image group id -> token
        self.tokbind: dict[object, int] = {}
        self.occupied: dict[tuple[int, str], int] = {}  # (parent, mount point) -> child made there
        self.made: set[int] = set()
        self.next_token = 0
        self.next_junk = -1_000_000
        self.log: list = []

    # -- journal -----------------------------------------------------------
    def _dset(self, d: dict, k, v) -> None:
        self.log.append(("d", d, k, d.get(k, _MISSING)))
        d[k] = v

    def _sadd(self, d: dict, k, x) -> None:
        s = d.setdefault(k, set())
        if x not in s:
            s.add(x)
            self.log.append(("s+", s, x))

    def _sdel(self, d: dict, k, x) -> None:
        s = d.get(k)
        if s is not None and x in s:
            s.discard(x)
            self.log.append(("s-", s, x))

    def mark(self) -> int:
        return len(self.log)

    def undo(self, mark: int) -> None:
        while len(self.log) > mark:
            e = self.log.pop()
            if e[0] == "d":
                _, d, k, old = e
                if old is _MISSING:
                    d.pop(k, None)
                else:
                    d[k] = old
            elif e[0] == "s+":
                e[1].discard(e[2])
            elif e[0] == "s-":
                e[1].add(e[2])
            elif e[0] == "made":
                self.made.discard(e[1])

    def token(self) -> int:
        self.next_token += 1
        self.log.append(("n",))  # tokens are never reused: nothing to undo
        return self.next_token

    # -- state changes -------------------------------------------------------
    def add(self, node: _Node, ks, km) -> None:
        self._dset(self.nodes, node.id, node)
        self.set_state(node.id, ks, km)
        if node.real:
            self.made.add(node.id)
            self.log.append(("made", node.id))

    def set_state(self, n: int, ks, km) -> None:
        old_s, old_m = self.ks.get(n), self.km.get(n)
        source = self.nodes[n].source
        for d, sd, tok in ((self.members, self.src_members, old_s), (self.slaves, self.src_slaves, old_m)):
            if tok is not None:
                self._sdel(d, tok, n)
                if source:
                    self._sdel(sd, tok, n)
        self._dset(self.ks, n, ks)
        self._dset(self.km, n, km)
        for d, sd, tok in ((self.members, self.src_members, ks), (self.slaves, self.src_slaves, km)):
            if tok is not None:
                self._sadd(d, tok, n)
                if source:
                    self._sadd(sd, tok, n)

    def _leave(self, n: int, new_master) -> None:
        """n leaves its peer group; when it was the last member, the group's slaves move to
        `new_master` (the kernel's do_make_slave)."""
        s = self.ks.get(n)
        if s is None:
            return
        if len(self.members.get(s, ())) <= 1:  # n is the last member (no set copy: big groups)
            for x in list(self.slaves.get(s, ())):
                self.set_state(x, self.ks[x], new_master)

    def make_private(self, n: int) -> None:
        self._leave(n, self.km.get(n))
        self.set_state(n, None, None)

    def make_slave(self, n: int) -> None:
        s, m = self.ks.get(n), self.km.get(n)
        if s is None:
            return
        others = len(self.members.get(s, ())) > 1  # members other than n
        self._leave(n, m)
        self.set_state(n, None, s if others else m)

    def make_shared(self, n: int) -> None:
        if self.ks.get(n) is None:
            self.set_state(n, self.token(), self.km.get(n))

    def bound(self, token) -> bool:
        return token in self.tokbind

    def do_bind(self, g: int, token) -> None:
        self._dset(self.bind, g, token)
        self._dset(self.tokbind, token, g)


_MISSING = object()
_ANY = object()   # _find: a mount shown with any source


def _canonical_order(mounts: list[dict], by_id: dict[int, dict]) -> list[dict]:
    """The mounts in an order that the tree alone decides, not the ids: mount ids are not creation
    order where the kernel reuses freed ones (all kernels before unique ids, 6.8), so a plan that
    followed them would succeed or fail depending on what was unmounted before the tree was made.
    Parents before children (depth), then mount point, root and propagation, so only mounts alike
    in all of that (in different namespaces) keep their id order, where either choice is the same.
    Unique ids, where the image has them, are creation order and decide first."""
    depth: dict[int, int] = {}

    def depth_of(m: dict) -> int:
        first, chain, seen = m["id"], [], set()
        while m["id"] not in depth:
            p = by_id.get(m.get("parent"))
            if p is None or m["id"] in seen:  # a namespace root (or a cycle the validator lets by)
                depth[m["id"]] = 0
                break
            seen.add(m["id"])
            chain.append(m)
            m = p
        for c in reversed(chain):
            depth[c["id"]] = depth[c["parent"]] + 1
        return depth[first]

    # 64-bit unique ids (Linux >= 6.8) are creation order and come first where the image has them:
    # a restored tree keeps its overlays younger than their layers' mounts and older than what
    # covers them later, which the next dump reads from those ids (engine/fs/overlay.py).
    from engine import fs
    # (a pty bound as /dev/console after the devpts mount its master's ptmx is opened through)
    return fs.held_roots_last(sorted(mounts, key=lambda m: (m.get("uid") or 0, depth_of(m), m["mountpoint"], m["root"],
                                                            bool(m.get("master")), bool(m.get("shared")), m["id"])))


class _Planner:
    def __init__(self, mounts, helper_ok, userns_copies=None, subtrees=None, sources=None):
        self.helper_ok = helper_ok
        # Mount -> the source it shows, where restore must give each its own (kept_sources): a bind
        # or a propagated copy shows its source's, so a member is bound only from one that shows its.
        self.names = dict(sources or {})
        # Unlocked mount -> the locked mounts below it that restore makes with it (lock_groups).
        self.subtrees = {top: list(members) for top, members in (subtrees or {}).items()}
        self.in_subtree = {i for members in self.subtrees.values() for i in members}
        # Namespaces copied into their user namespace: ns -> (mounts made before the copy, which the
        # kernel locks; mounts made after it, in the copy).
        self.userns_copies = {ns: (set(before), set(after)) for ns, (before, after) in (userns_copies or {}).items()}
        self.later_ns = {i: ns for ns, (_, after) in self.userns_copies.items() for i in after}
        self.locked_ns = {i: ns for ns, (before, _) in self.userns_copies.items() for i in before}
        self.copied: set = set()
        mounts = self._before_copy(mounts)
        self.mounts = {m["id"]: m for m in mounts}
        self.steps = 0  # work done (mounts looked at): the scaling test counts it
        self.order = _canonical_order(mounts, self.mounts)
        self.rank = {m["id"]: i for i, m in enumerate(self.order)}
        self.roots = [m for m in self.order if m.get("parent") not in self.mounts]
        self.children: dict[tuple[int, str], list[dict]] = {}
        self.kids: dict[int, list[dict]] = {}
        for m in self.order:
            if m.get("parent") is not None and m["parent"] in self.mounts:
                self.children.setdefault((m["parent"], m["mountpoint"]), []).append(m)
                self.kids.setdefault(m["parent"], []).append(m)
        self.by_shared: dict[int, list[dict]] = {}
        for m in self.order:
            if m.get("shared"):
                self.by_shared.setdefault(m["shared"], []).append(m)
        self.st = _State()
        self.ops: list[tuple] = []
        self.locked_seeds: dict[int, list[str]] = {}   # seed -> the flag locks it is made with (lockseed)
        self.next_seed = -1
        self.seeds: list[int] = []
        # External masters: the host mounts (in the service namespace) that are slaves of them.
        self.ext_nodes: dict[int, list[int]] = {}
        self.ext_of: dict[int, int] = {}  # host-mount node -> its external mount
        for m in mounts:
            if m.get("external") and m.get("master") and m["master"] not in self.by_shared:
                tok = ("ext", m["master"])
                nid = -500_000 - m["id"]
                self.st.add(_Node(nid, m["sb"], m["root"], None, False, source=True), None, tok)
                self.st.do_bind(m["master"], tok)
                self.ext_nodes.setdefault(m["master"], []).append(nid)
                self.ext_of[nid] = m["id"]
        self.st.log.clear()
        self._constraints()

    def _tree(self, g: int) -> list[dict]:
        """The mounts of image peer group g's propagation tree: its members, its slaves, their groups'."""
        out, seen, todo = [], set(), [g]
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            out.extend(self.by_shared.get(t, ()))
            for x in self.slaves_of.get(t, ()):
                if x.get("shared"):
                    todo.append(x["shared"])
                else:
                    out.append(x)
        return out

    def _copy_candidates(self, c: dict, dentry: str, q: dict) -> list[dict]:
        """The mounts of the image that a copy of c propagated into q could be."""
        rel = _rel(dentry, q["root"])
        if rel is None:
            return []
        return [x for x in self.children.get((q["id"], _join(q["mountpoint"], rel)), ())
                if x["sb"] == c["sb"] and x["root"] == c["root"] and x is not c
                and self.names.get(x["id"]) == self.names.get(c["id"])]

    def _constraints(self) -> None:
        """Which mounts should wait for which (from the image alone): a mount attached under a shared
        parent waits for the members of the parent's propagation tree that hold a copy of it (so
        propagation makes that copy), and a member that holds no copy of it waits for it (so it gets
        none). Only a preference: the simulation decides what is possible."""
        self.slaves_of: dict[int, list[dict]] = {}
        for m in self.mounts.values():
            if m.get("master"):
                self.slaves_of.setdefault(m["master"], []).append(m)
        trees: dict[int, list[dict]] = {}
        self.wait_for: dict[int, list[int]] = {}   # c -> mounts to make before c
        self.blocks: dict[int, list[int]] = {}     # q -> mounts to attach before q is made
        self.copy_of: dict[int, list[int]] = {}    # x -> mounts whose propagated copy x may be
        for c in self.mounts.values():
            p = self.mounts.get(c.get("parent"))
            if p is None or not p.get("shared"):
                continue
            tree = trees.get(p["shared"])
            if tree is None:
                tree = trees[p["shared"]] = self._tree(p["shared"])
            if len(tree) > 1:
                dentry = _join(p["root"], _rel(c["mountpoint"], p["mountpoint"]))
                for q in tree:
                    if q is p or q is c or _rel(dentry, q["root"]) is None:
                        continue
                    cands = [x for x in self._copy_candidates(c, dentry, q) if x["id"] not in self.in_subtree]
                    if cands:
                        self.wait_for.setdefault(c["id"], []).append(q["id"])
                        for x in cands:
                            self.copy_of.setdefault(x["id"], []).append(c["id"])
                    else:
                        self.blocks.setdefault(q["id"], []).append(c["id"])

    def _counters(self) -> None:
        """How many mounts each mount still waits for (wait_for and blocks) and may be a copy of
        (copy_of), with the reverse index that updates them as mounts are made: the ready queue's
        keys without going through the lists again at every step."""
        self.waits: dict[int, int] = {}
        self.copies_left: dict[int, int] = {}
        self.rev_wait: dict[int, list[int]] = {}
        self.rev_copy: dict[int, list[int]] = {}
        for i in self.mounts:
            w = set(self.wait_for.get(i, ())) | set(self.blocks.get(i, ()))
            self.waits[i] = len(w)
            for x in w:
                self.rev_wait.setdefault(x, []).append(i)
            c = set(self.copy_of.get(i, ()))
            self.copies_left[i] = len(c)
            for x in c:
                self.rev_copy.setdefault(x, []).append(i)

    def _key(self, m: dict) -> tuple:
        """Ready mounts are tried in this order. Namespace roots first, masters before slaves: a root
        cannot join a group that a seed started (pivot_root refuses a shared root), so it must start
        it. Then mounts that wait for none, then those that propagation may make (the shallowest
        first: the bind itself rather than its copies inside its peers); among those that wait, the
        ones with fewer mounts left to wait for (the tree's own record of what was made before what,
        e.g. the n-th of n binds of a shared mount into itself), masters before slaves, and the
        canonical order last."""
        i = m["id"]
        root = m.get("parent") not in self.mounts
        copy = self.copies_left[i] > 0
        return (not root, root and bool(m.get("master")), self.waits[i] > 0, copy,
                m["mountpoint"].count("/") if copy else 0, self.waits[i], bool(m.get("master")), self.rank[i])

    @staticmethod
    def where(m: dict) -> str:
        return f"mount {m['id']} ({m['mountpoint']})"

    # -- sources ---------------------------------------------------------------
    def _src_of(self, nid: int, root: str):
        """The plan's spelling of "a bind of node nid at root"."""
        node = self.st.nodes[nid]
        rel = _rel(root, node.root)
        if nid in self.ext_of:
            return ("ext", self.ext_of[nid], rel)
        return ("node", nid, rel)

    def _find(self, sb, root: str, ks, km, peer_only=False, name=None) -> int | None:
        """A made mount (seed first) of superblock sb, whose root covers `root`, shown with source
        `name`, in state (ks, km) (peer_only: any member of group ks)."""
        st = self.st
        if ks is not None:
            sources, pool = st.src_members.get(ks, ()), st.members.get(ks, ())
        else:
            sources, pool = st.src_slaves.get(km, ()), st.slaves.get(km, ())

        def fits(n) -> bool:
            node = st.nodes[n]
            self.steps += 1
            return (node.sb == sb and (name is _ANY or node.name == name) and _rel(root, node.root) is not None
                    and (peer_only or (st.ks[n], st.km[n]) == (ks, km)))

        # A seed or host mount first (few per group); a member of the image only when the group has
        # none that fits, then the one with the shortest root (sorted: the same choice in any id order).
        found = [n for n in sources if fits(n)]
        if not found:
            found = [n for n in pool if st.nodes[n].real and st.nodes[n].mountpoint is not None and fits(n)]
        if not found:
            return None
        return min(found, key=lambda n: (len(st.nodes[n].root), self.rank.get(n, 0), n))

    def _lost(self, m: dict, root: str, ks, km, msg: str) -> PlanError:
        """The refusal for m, which no made mount of its group (ks) or master (km) covering `root` can be
        bound for: `msg`, or, where one shown with another source could, that (a bind keeps its source's)."""
        if self._find(m["sb"], root, ks, km, peer_only=ks is not None, name=_ANY) is None:
            return PlanError(msg)
        return PlanError(f"{self.where(m)}: shown with source {self.names.get(m['id'])!r}, and the mounts of its peer "
                         f"group or master it could be bound from show another (a bind keeps its source's){_NEED}")

    def _seed(self, sb, src, ops_after, root="/") -> int:
        sid = self.next_seed
        self.next_seed -= 1
        self.seeds.append(sid)
        self.ops.append(("seed", sid, sb, root, src))
        return sid

    def _ensure(self, g: int, sb) -> object:
        """The token of image peer group g, making its seed when it has none yet."""
        tok = self.st.bind.get(g)
        if tok is not None:
            return tok
        members = self.by_shared.get(g)
        if not members:
            raise PlanError(f"peer group {g} has no mount in the image{_NEED}")
        first = members[0]
        name = self.names.get(first["id"])
        odd = next((x for x in members if self.names.get(x["id"]) != name), None)
        if odd is not None:
            raise PlanError(f"{self.where(odd)}: its peer group {g} has members shown with other sources "
                            f"({self.names.get(odd['id'])!r}, {name!r}), and a bind shows its source's{_NEED}")
        if not self.helper_ok(first["sb"]):
            raise PlanError(f"{self.where(first)}: its peer group {g} is on a filesystem the restore does not "
                            f"create, so no temporary mount can start the group{_NEED}")
        master = first.get("master")
        if master:
            if master in self._ensuring:
                raise PlanError(f"peer group {g} is its own master through a cycle")
            self._ensuring.add(master)
            try:
                mt = self._ensure(master, first["sb"])
            finally:
                self._ensuring.discard(master)
            # The seed is bound from the member of the master group with the widest root that covers
            # every member's (a group a namespace root started lies at a directory, not the superblock's root).
            need = _common_root([x["root"] for x in members])
            src = self._find(first["sb"], need, mt, None, peer_only=True, name=name)
            if src is None:
                raise self._lost(first, need, mt, None, f"{self.where(first)}: no mount of its master group {master} "
                                                        f"covers {need}, the roots of its peer group {g}{_NEED}")
            root = self.st.nodes[src].root
            sid = self._seed(first["sb"], self._src_of(src, root), None, root=root)
            self._lock_seed(sid, g, members)
            self.st.add(_Node(sid, first["sb"], root, None, False, source=True, name=name),
                        self.st.ks[src], self.st.km[src])
            self.ops.append(("prop", sid, "slave"))
            self.st.make_slave(sid)
            self.ops.append(("prop", sid, "shared"))
            self.st.make_shared(sid)
        else:
            # (a fresh mount of the superblock shown with the group's source: restore mounts it again
            # under that source where it is not the superblock's first)
            sid = self._seed(first["sb"], None if name is None else ("source", first["id"], ""), None)
            self._lock_seed(sid, g, members)
            self.st.add(_Node(sid, first["sb"], "/", None, False, source=True, name=name), None, None)
            self.ops.append(("prop", sid, "shared"))
            self.st.make_shared(sid)
        self.st.do_bind(g, self.st.ks[sid])
        return self.st.ks[sid]

    def _lock_seed(self, sid: int, g: int, members: list[dict]) -> None:
        """Unlocked members with locked flags (binds made inside a user namespace of an inherited mount,
        then shared: LXC's unprivileged mount entries) can only be binds of a mount that has those flag
        locks: the seed gets them (op lockseed), and every member must have the same."""
        flagged = [x for x in members if x.get("locked_flags") and not x.get("locked")]
        if not flagged:
            return
        want = sorted(flagged[0]["locked_flags"])
        odd = next((x for x in members if x.get("locked") or sorted(x.get("locked_flags") or ()) != want), None)
        if odd is not None:
            raise PlanError(f"{self.where(odd)}: its peer group {g} has members with other locks or locked flags "
                            f"than mount {flagged[0]['id']} ({flagged[0]['mountpoint']}){_NEED}")
        self.ops.append(("lockseed", sid, flagged[0]["id"]))
        self.locked_seeds[sid] = want

    def _check_flag_locks(self, m: dict, src) -> None:
        """An unlocked mount with locked flags made as a bind (to inherit a group or master) gets the
        flag locks of its source only: refuse a source without exactly those."""
        if not m.get("locked_flags") or m.get("locked") or src is None:
            return
        want = sorted(m["locked_flags"])
        kind, nid, _ = src
        have = None if kind != "node" else (self.locked_seeds.get(nid) if nid < 0
                                            else sorted(self.mounts[nid].get("locked_flags") or ()))
        if have != want:
            raise PlanError(f"{self.where(m)}: unlocked with locked flags ({','.join(want)}), and bound from a "
                            f"mount without those flag locks to inherit its peer group or master{_NEED}")

    def _master_token(self, h: int, sb):
        if h in self.by_shared:
            return self._ensure(h, sb)
        tok = self.st.bind.get(h)
        if tok is None:
            raise PlanError(f"master group {h} is outside the image and no external mount gives it{_NEED}")
        return tok

    # -- one step ----------------------------------------------------------------
    def _make(self, m: dict) -> None:
        """Choose how m is made and record it (ops and state); PlanError when no way works."""
        g, h, nm = m.get("shared"), m.get("master"), self.names.get(m["id"])
        parent = self.mounts.get(m.get("parent"))
        parent_shared = parent is not None and self.st.ks.get(parent["id"]) is not None
        src = None
        state = (None, None)
        # A subtree's members are made with its top's clone: their seeds come before its make.
        inputs = {i: self._subtree_input(self.mounts[i]) for i in self.subtrees.get(m["id"], ())}
        if m.get("external") and not (g or h):
            pass  # a plain clone of the host path (restore's usual way)
        elif parent is None and not (m.get("external") and h in self.ext_nodes):
            # A namespace root: pivot_root refuses a shared one, so it is made private or a slave
            # and becomes shared (the first of its group) once it is the root.
            if g and g in self.st.bind:
                raise PlanError(f"{self.where(m)}: the root of a mount namespace that joins an existing peer "
                                f"group{_NEED}")
            if g and m["id"] in self.locked_ns and m.get("locked") and "atime" not in (m.get("locked_flags") or ()):
                # Pivoted into inside its user namespace (the mount lock alone): restore pivots into a
                # clone of it after the copy, and a clone of a shared root is shared, which pivot_root
                # refuses (LXC's unprivileged overlay root).
                raise PlanError(f"{self.where(m)}: a shared root pivoted into inside its user namespace{_NEED}")
            if h:
                th = self._master_token(h, m["sb"])
                src, state = self._src_of(self._slave_of(m, th), m["root"]), (None, th)
        elif m.get("external") and h in self.ext_nodes:
            # A bind of the host's mount, a slave of the outside group there (made shared after, if).
            src, state = ("ext", m["id"], ""), (None, self.st.bind[h])
        elif m["id"] in self.subtrees:
            src, state = self._subtree_input(m)
        elif g and not h and not self.helper_ok(m["sb"]) and g not in self.st.bind:
            pass  # no seed: a plain clone, made shared once attached (the first of its group; the others bind it)
        elif g or h:
            th = self._master_token(h, m["sb"]) if h else None
            tg = self.st.bind.get(g) if g else None
            if g and tg is None and self.helper_ok(m["sb"]):
                tg = self._ensure(g, m["sb"])
            if g and tg is not None:
                n = self._find(m["sb"], m["root"], tg, th, name=nm)
                if n is None:
                    raise self._lost(m, m["root"], tg, th, f"{self.where(m)}: no mount of its peer group {g} covers "
                                                           f"its root {m['root']}{_NEED}")
                src, state = self._src_of(n, m["root"]), (tg, th)
            else:
                # First of a slave group (or a plain slave): a bind of a member of the master group,
                # made slave (and shared) once attached.
                n = self._find(m["sb"], m["root"], th, None, peer_only=True, name=nm)
                if n is None and not parent_shared:
                    n = self._find(m["sb"], m["root"], None, th, name=nm)
                if n is None:
                    raise self._lost(m, m["root"], th, None, f"{self.where(m)}: no mount of its master group {h} "
                                                             f"covers its root {m['root']}{_NEED}")
                src, state = self._src_of(n, m["root"]), (self.st.ks[n], self.st.km[n])
        if m["id"] not in self.subtrees:   # (a subtree's top takes its flag locks from the copy)
            self._check_flag_locks(m, src)
        self.ops.append(("make", m["id"], src))
        self.st.add(_Node(m["id"], m["sb"], m["root"], m["mountpoint"], True, name=nm), *state)
        if parent is None and state[0] is not None:
            # pivot_root refuses a shared new root: the root joins a group only as its first member
            # (made shared once it is the root), or as a slave.
            raise PlanError(f"{self.where(m)}: the root of a mount namespace that joins an existing peer "
                            f"group{_NEED}")
        copies = self._attach(m, parent) if parent is not None else []
        self.ops.append(("attach", m["id"], [c["id"] for c in copies]))
        for x in [m] + copies:
            self._reach(x)
        if m["id"] in self.subtrees:
            self._members(m, parent, inputs)
        if parent is None and self.st.ks[m["id"]] is not None:
            # Other namespaces whose root is a peer of this one (a namespace copied with propagation
            # unchanged) are copies of this namespace made now, while it holds only its root.
            for x in self.roots:
                if (x.get("parent") not in self.mounts and x["id"] not in self.st.made
                        and (x.get("shared"), x.get("master"), x["sb"], x["root"], self.names.get(x["id"]))
                        == (g, h, m["sb"], m["root"], nm)):
                    self.ops.append(("nscopy", x["id"], m["id"]))
                    self.st.add(_Node(x["id"], x["sb"], x["root"], x["mountpoint"], True, name=nm),
                                self.st.ks[m["id"]], self.st.km[m["id"]])

    def _attach(self, m: dict, parent: dict) -> list[dict]:
        """Attach m under parent: the copies propagation makes (image mounts, adopted)."""
        key = (parent["id"], m["mountpoint"])
        if key in self.st.occupied:
            raise PlanError(f"{self.where(m)}: another mount is already at its mount point")
        self.st._dset(self.st.occupied, key, m["id"])
        pt = self.st.ks.get(parent["id"])
        if pt is None:
            return []
        if self.st.ks[m["id"]] is None:
            self.st.set_state(m["id"], self.st.token(), self.st.km[m["id"]])
        dentry = _join(parent["root"], _rel(m["mountpoint"], parent["mountpoint"]))
        copies: list[dict] = []
        nm = self.names.get(m["id"])

        def copy_into(q: int, ks, km) -> None:
            qn = self.st.nodes[q]
            rel = _rel(dentry, qn.root)
            if rel is None:
                return
            if not qn.real or qn.mountpoint is None:
                jid = self.st.next_junk
                self.st.next_junk -= 1
                self.st.add(_Node(jid, m["sb"], m["root"], None, False, name=nm), ks, km)
                return
            mp = _join(qn.mountpoint, rel)
            if (q, mp) in self.st.occupied:
                # Every peer whose root covers the place gets a copy of what is attached on another: over a
                # peer that already holds one the kernel tucks the copy beneath it, covered at birth. The
                # plan attaches one mount at a time and never lets that happen (it could not reach the
                # covered copy to finish it); stacks of peers built apart and attached whole (recursive
                # clones) might, but are not planned.
                o = self.st.occupied[(q, mp)]
                raise PlanError(f"{self.where(m)}: attached on mount {parent['id']}, propagation would tuck its copy "
                                f"in peer {q} ({qn.mountpoint}) beneath mount {o} ({mp}), there already "
                                f"(reparenting): a copy covered at birth, which the construction cannot reach to give "
                                f"it its flags, its propagation and the mounts on it{_NEED}")
            cands = [c for c in self.children.get((q, mp), ()) if c["id"] not in self.st.made
                     and c["sb"] == m["sb"] and c["root"] == m["root"]]
            if cands and not any(self.names.get(c["id"]) == nm for c in cands):
                raise PlanError(f"{self.where(m)}: propagation would copy it to {mp}, where the image's mount shows "
                                f"another source than its {nm!r} (a copy shows the source of the mount it is "
                                f"copied from){_NEED}")
            cands = [c for c in cands if self.names.get(c["id"]) == nm]
            if not cands:
                raise PlanError(f"{self.where(m)}: propagation would copy it to {mp}, where the image has no such "
                                f"mount (non-uniform propagation){_NEED}")
            c = min(cands, key=lambda c: self.rank[c["id"]])
            ns = self.later_ns.get(c["id"])
            if ns is not None and ns not in self.copied:
                raise PlanError(f"{self.where(m)}: propagation would copy it to {mp} before its namespace {ns} is "
                                f"copied into its user namespace, which would lock it{_NEED}")
            self.st.add(_Node(c["id"], c["sb"], c["root"], c["mountpoint"], True, name=nm), ks, km)
            self.st._dset(self.st.occupied, (q, mp), c["id"])
            copies.append(c)

        def order(q: int) -> tuple:
            # Image mounts in canonical order (not their ids), then seeds and their copies as made.
            return (q not in self.rank, self.rank.get(q, 0), -q)

        def visit(t, src, src_master, exclude) -> None:
            peers = sorted(self.st.members.get(t, ()), key=order)
            slaves = sorted(self.st.slaves.get(t, ()), key=order)
            for q in peers:
                if q != exclude and q != m["id"]:
                    copy_into(q, src, src_master)
            groups: dict[object, list[int]] = {}
            for q in slaves:
                if q == m["id"]:
                    continue
                if self.st.ks.get(q) is None:
                    copy_into(q, None, src)
                else:
                    groups.setdefault(self.st.ks[q], []).append(q)
            for u in groups:
                visit(u, self.st.token(), src, None)

        visit(pt, self.st.ks[m["id"]], self.st.km[m["id"]], parent["id"])
        return copies

    def _reach(self, m: dict) -> None:
        """Give made mount m its image propagation from the state it has (ops), or PlanError."""
        st, n = self.st, m["id"]
        g, h = m.get("shared"), m.get("master")
        th = self._master_token(h, m["sb"]) if h else None
        tg = st.bind.get(g) if g else None

        def op(kind):
            self.ops.append(("prop", n, kind))
            getattr(st, "make_" + kind)(n)

        s, k = st.ks[n], st.km[n]
        if not g and not h:
            if s is not None or k is not None:
                op("private")
        elif not g:
            if s is None and k == th:
                pass
            elif s == th or (s is not None and k == th and len(st.members[s]) <= 1):
                op("slave")
        elif tg is not None:
            pass  # checked below
        elif not h:
            if s is not None and not st.bound(s) and k is None:
                st.do_bind(g, s)
            else:
                if s is not None or k is not None:
                    op("private")
                op("shared")
                st.do_bind(g, st.ks[n])
        else:
            if s is not None and not st.bound(s) and k == th:
                st.do_bind(g, s)
            elif s == th:
                op("slave")
                op("shared")
                st.do_bind(g, st.ks[n])
            elif s is None and k == th:
                op("shared")
                st.do_bind(g, st.ks[n])
        want = (st.bind.get(g) if g else None, th)
        if (st.ks[n], st.km[n]) != want:
            raise PlanError(f"{self.where(m)}: the way it must be made leaves it in another peer group or with "
                            f"another master than it had{_NEED}")

    def _subtree_input(self, x: dict) -> tuple:
        """(src, state) of what restore copies into the user namespace for x, the top or a member of a
        subtree made there (lock_subtree): the copy of a shared mount is a slave of its group, of a
        slave one of the same master, of a private one private. A slave of group h is made from a slave
        of h (a seed bound from a member, made slave, where none is made yet): a member of h would
        propagate what is mounted on it while the subtree is put together into h's other members. x's
        own group (shared) is one that starts with it once attached."""
        h = x.get("master")
        if not h:
            return None, (None, None)
        th = self._master_token(h, x["sb"])
        return self._src_of(self._slave_of(x, th), x["root"]), (None, th)

    def _slave_of(self, x: dict, th) -> int:
        """A made slave of group th whose root covers x's: one there is, else a seed bound from the
        member of th with the widest root that covers x's (a namespace root may start a group at a
        directory, so its slaves' seed cannot be at the superblock's root), made slave."""
        nm = self.names.get(x["id"])
        n = self._find(x["sb"], x["root"], None, th, name=nm)
        if n is not None:
            return n
        peer = self._find(x["sb"], x["root"], th, None, peer_only=True, name=nm)
        if peer is None:
            raise self._lost(x, x["root"], th, None, f"{self.where(x)}: no mount of its master group {x['master']} "
                                                     f"covers its root {x['root']}{_NEED}")
        root = self.st.nodes[peer].root
        n = self._seed(x["sb"], self._src_of(peer, root), None, root=root)
        self.st.add(_Node(n, x["sb"], root, None, False, source=True, name=nm), self.st.ks[peer], self.st.km[peer])
        self.ops.append(("prop", n, "slave"))
        self.st.make_slave(n)
        return n

    def _members(self, top: dict, parent: dict | None, inputs: dict) -> None:
        """The locked mounts below unlocked `top`, made and attached with it (restore clones the whole
        subtree from a locked copy inside the user namespace, each from its `inputs`, _subtree_input):
        a subtree attached where propagation would copy it is refused; under a shared parent the
        kernel makes each of its mounts shared (a group of its own), as the top."""
        members = [self.mounts[i] for i in self.subtrees[top["id"]]]
        pt = self.st.ks.get(parent["id"]) if parent is not None else None
        if pt is not None and (len(self.st.members.get(pt, ())) > 1 or self.st.slaves.get(pt)):
            raise PlanError(f"{self.where(top)}: locked mounts below it, under a shared parent whose peers "
                            f"or slaves would get copies of it{_NEED}")
        for x in members:
            key = (x["parent"], x["mountpoint"])
            if key in self.st.occupied:
                raise PlanError(f"{self.where(x)}: another mount is already at its mount point")
            if x.get("shared") and x["shared"] in self.st.bind:
                raise PlanError(f"{self.where(x)}: in a subtree of locked mounts below the unlocked mount {top['id']} "
                                f"({top['mountpoint']}), a peer of mounts made before it: the copy that locks it "
                                f"starts a group of its own{_NEED}")
            src, (_, km) = inputs[x["id"]]
            self.st._dset(self.st.occupied, key, x["id"])
            self.st.add(_Node(x["id"], x["sb"], x["root"], x["mountpoint"], True, name=self.names.get(x["id"])),
                        None if pt is None else self.st.token(), km)
            self.ops.append(("member", x["id"], src))
            self._reach(x)

    # -- the whole plan ----------------------------------------------------------------
    def _before_copy(self, mounts: list[dict]) -> list[dict]:
        """What a mount made before its namespace is copied into a user namespace must be for the copy
        to come out as the image has it: a member of its master group (the copy of a shared mount is
        a slave of its group), or private (made shared in the copy when it is); a slave of a group
        that the image has no member of stays a slave (a copy keeps its master). The image's own
        entries take over once the copy is made (self.after_copy)."""
        self.after_copy: dict[int, dict] = {}
        if not self.locked_ns:
            return mounts
        master_of = {m["shared"]: m.get("master") for m in mounts if m.get("shared")}
        ids = {m["id"] for m in mounts}
        out = []
        for m in mounts:
            if m["id"] in self.locked_ns and m.get("parent") in ids:  # (a root is never made shared)
                self.after_copy[m["id"]] = m
                h = m.get("master")
                if h in master_of:
                    m = dict(m, shared=h, master=master_of[h])
                elif not h:
                    m = dict(m, shared=None, master=None)
                else:
                    m = dict(m, shared=None)
            out.append(m)
        return out

    def _userns_copy(self, ns) -> None:
        """Namespace ns is copied from inside its user namespace (the kernel locks what it copies there)
        and the copy replaces it: in the copy a shared mount is a slave of its group, a slave one of
        the same master; then the old mounts go away with the old namespace, each leaving its group as
        an unmount does (the group's slaves, the copies among them, pass to a peer left or its master)."""
        st = self.st
        self.ops.append(("userns", ns))
        self.copied.add(ns)
        before = sorted(self.userns_copies[ns][0], key=self.rank.get)
        twin = {}
        for x in before:
            if st.ks[x] is not None:
                jid = st.next_junk
                st.next_junk -= 1
                st.add(_Node(jid, st.nodes[x].sb, st.nodes[x].root, None, False), None, st.ks[x])
                twin[x] = jid
        for x in twin:
            st.make_private(x)
        for x, jid in twin.items():
            st.set_state(x, None, st.km[jid])
            st.set_state(jid, None, None)
        for x in before:
            self.mounts[x] = self.after_copy.get(x, self.mounts[x])
            g = self.mounts[x].get("shared")
            tok = st.bind.get(g) if g else None
            if tok is not None and not st.members.get(tok):
                # Its group died with the old namespace (no member left, the copies' master gone with
                # it): the image's group is one the copy starts again (an unprivileged LXC root,
                # made shared once its namespace was copied).
                del st.bind[g]
                del st.tokbind[tok]
            self._reach(self.mounts[x])  # made shared where it is shared in the image
        st.log.clear()

    def run(self) -> list[tuple]:
        self._ensuring: set = set()
        self._counters()
        made = self.st.made
        queued: dict[int, tuple] = {}  # mount -> its key in the heap (older entries are stale)
        heap: list[tuple] = []

        def push(m: dict) -> None:
            if m["id"] in made or (m.get("parent") in self.mounts and m["parent"] not in made):
                return
            if self.later_ns.get(m["id"], None) not in (None, *self.copied):
                return  # in the copy of its namespace (pushed again once that is made)
            k = self._key(m)
            if queued.get(m["id"]) != k:
                queued[m["id"]] = k
                heapq.heappush(heap, (k, m["id"]))

        for m in self.order:
            push(m)
        first_err, failed = None, []
        while heap:
            k, i = heapq.heappop(heap)
            self.steps += 1
            if i in made or queued.get(i) != k:
                continue
            del queued[i]
            m = self.mounts[i]
            mark, nops, nseeds, seed_no = self.st.mark(), len(self.ops), len(self.seeds), self.next_seed
            try:
                self._make(m)
            except PlanError as e:
                self.st.undo(mark)
                del self.ops[nops:]
                del self.seeds[nseeds:]
                for k in [k for k in self.locked_seeds if k <= seed_no]:
                    del self.locked_seeds[k]   # seeds of the step taken back (their ids are made again)
                self.next_seed = seed_no
                first_err = first_err or e
                failed.append(m)
                continue
            new = [e[1] for e in self.st.log if e[0] == "made"]
            self.st.log.clear()
            first_err = None
            for x in new:
                for j in self.rev_wait.get(x, ()):
                    self.waits[j] -= 1
                for j in self.rev_copy.get(x, ()):
                    self.copies_left[j] -= 1
            for x in new:
                for j in [*self.rev_wait.get(x, ()), *self.rev_copy.get(x, ())]:
                    push(self.mounts[j])
                for c in self.kids.get(x, ()):
                    push(c)
            for f in failed:  # the step may have made them possible
                push(f)
            failed = []
            for ns in {self.locked_ns[x] for x in new if x in self.locked_ns} - self.copied:
                if self.userns_copies[ns][0] <= made:
                    self._userns_copy(ns)
                    for j in sorted(self.userns_copies[ns][1], key=self.rank.get):
                        push(self.mounts[j])
        if len(made) < len(self.mounts):
            if first_err:
                raise first_err
            m = next(m for m in self.order if m["id"] not in made)
            raise PlanError(f"{self.where(m)}: its parent cannot be made")
        for sid in self.seeds:
            self.ops.append(("drop", sid))
        for m in self.order:
            if m.get("unbindable"):
                self.ops.append(("prop", m["id"], "unbindable"))
        return self.ops


def plan(mounts, helper_ok=lambda sb: True, userns_copies=None, subtrees=None, sources=None) -> list[tuple]:
    """The construction plan for `mounts` (image mount dicts of every namespace: id, parent,
    mountpoint, root, sb, shared, master, external); PlanError naming a mount when none works.
    `helper_ok(sb)`: whether a seed (a mount of superblock sb's root) can be made.
    `userns_copies`: {namespace: (mounts before, mounts after)} for the namespaces owned by a user
    namespace (engine.userns_cr.construct_copies): the plan copies each into its user namespace
    (op ("userns", namespace)) once its mounts "before" are made, and makes those "after" in the copy.
    `subtrees`: {unlocked mount: [the locked mounts below it]} (engine.userns_cr.construct_subtrees),
    made and attached with that mount (op ("member", id) each).
    `sources`: {mount: the source it shows} where restore gives each mount its own (kept_sources):
    a member is bound only from a mount that shows its source, and a group's seed is a mount of
    the superblock under its members' source (src ("source", member, "")); none: sources not checked."""
    return _Planner(list(mounts), helper_ok, userns_copies, subtrees, sources).run()


def kept_sources(entries) -> dict[int, str]:
    """{mount: source} for `entries` ((mount id, fs type, the source mountinfo shows) of the mounts
    of superblocks restore makes) whose source restore gives back as shown: a type whose source
    names the mount's root (fs.FsType.source_names_root) shows each restored bind's own again."""
    from engine import fs
    out = {}
    for mid, fstype, source in entries:
        h = fs.lookup(fstype)
        if h is None or not h.source_names_root:
            out[mid] = source
    return out


# -- restore: executing the plan -----------------------------------------------------------

def assemble(r, service_fd: int) -> None:
    """Build every restored namespace by the plan (engine.restore's assemble step for
    sharing=construct): `r` is the restore's _Restorer."""
    r._plan_fds()
    r.keep_dirs = True
    r.new_id = {}
    r._sorted_rels = {}
    b = _Builder(r)
    b.copy_namespaces()
    for op in r.construct_ops:
        b.run(op)
    _check_counts(r)
    r._users_call(r.users.copy_rest, r, set(r.mounts))
    r.finish_assembly(service_fd)


class _Builder:
    """Runs the plan's ops one by one on the restorer `r`: seeds (temporary mounts whose peer group
    others join), mounts made and attached (with the copies propagation makes), user-namespace and
    namespace copies, propagation changes, and seeds dropped once their groups have members."""

    def __init__(self, r):
        from engine import kernel
        self.r = r
        self.roots = {ns["root"]: ns_id for ns_id, ns in r.doc["mntns"].items()}
        self.seeds: dict[int, dict] = {}
        self.attached: set[int] = set()  # for the user-namespace copy's check (its locked mounts are all there)
        # seed -> the mount whose locked flags it carries (op lockseed: a group of locked binds)
        self.lock_seed = {op[1]: op[2] for op in r.construct_ops if op[0] == "lockseed"}
        # What lock_subtree copies into the user namespace for each member of a subtree (op member).
        member_src = {op[1]: op[2] for op in r.construct_ops if op[0] == "member" and op[2] is not None}
        r.subtree_base = lambda m: self.source(member_src[m["id"]]) if m["id"] in member_src else None
        self.props = {"private": kernel.MS_PRIVATE, "slave": kernel.MS_SLAVE, "shared": kernel.MS_SHARED,
                      "unbindable": kernel.MS_UNBINDABLE}

    def run(self, op: tuple) -> None:
        """Carry out one op of the plan (its kind names the method)."""
        getattr(self, f"_op_{op[0]}")(*op[1:])

    def copy_namespaces(self) -> None:
        """Every namespace is copied from the service one before any seed exists: a copy of a seed (and of
        the copies in it) would join restored peer groups, and dropping it would unmount theirs."""
        import os

        from engine import kernel
        from engine.restore import bind_order
        r = self.r
        for ns_id in bind_order(r.doc, list(r.doc["mntns"])):   # (a bound mount namespace after its binder's)
            r.to_service()
            kernel.unshare(kernel.CLONE_NEWNS)
            r.ns_fd[ns_id] = os.open("self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=r.hostproc)
            r.current_ns = ns_id

    def mount_of(self, i: int) -> dict:
        """Mount `i` of the image, or seed `i` (negative ids)."""
        return self.seeds[i] if i < 0 else self.r.mounts[i]

    def source(self, src: tuple) -> tuple[int, str]:
        """(fd, path beneath it) to bind from, standing where that mount may be cloned."""
        r = self.r
        kind, i, rel = src
        if kind == "ext":
            r.to_service()
            return r.ext_host[i], rel
        if i < 0:
            r.to_service()
            return self.seeds[i]["fd"], rel
        r.enter(r.ns_of_mount[i])
        return r.mnt_fd[i], rel

    @staticmethod
    def clone_at(base: int, rel: str, what: str) -> int:
        """A detached clone of what lies at `rel` beneath `base` (its root when empty)."""
        import os

        from engine import kernel
        from engine.restore import _BENEATH, RestoreError
        try:
            where = kernel.openat2(base, rel, os.O_PATH, _BENEATH) if rel else os.dup(base)
            try:
                return kernel.open_tree(where, "", kernel.OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH)
            finally:
                os.close(where)
        except OSError as e:
            raise RestoreError(e.errno, f"{what}: cannot bind {rel or 'its root'}: {e.strerror}") from None

    def set_flags(self, m: dict, private: bool = False) -> None:
        """Per-mount flags of an attached mount (its propagation is the plan's)."""
        from engine import kernel
        from engine.restore import RestoreError, attr_of
        r = self.r
        r.enter(r.ns_of_mount[m["id"]])
        if r.legacy:
            r._legacy_attrs(m, private=private)
            return
        aset, aclr = attr_of(m["mount_opts"])
        try:
            kernel.mount_setattr(r.mnt_fd[m["id"]], "", kernel.AT_EMPTY_PATH, attr_set=aset, attr_clr=aclr)
        except OSError as e:
            raise RestoreError(e.errno, f"mount {m['id']} ({m['mountpoint']}): setting "
                                        f"{','.join(m['mount_opts'])}: {e.strerror}") from None

    def adopt(self, c: dict, mp: int | None, up: int | None = None) -> None:
        """Copy c was made by propagation: find it (the top of its mount point, just made); `up`: an
        fd on the directory of c's mount point, taken before a mount covered it (then the walk from
        above would end on the covering mount)."""
        import errno
        import os

        from engine import kernel
        from engine.restore import _BENEATH, RestoreError
        r = self.r
        q = r.mounts[c["parent"]]
        # The walk to c's mount point, from the nearest mount above it whose mount point differs
        # (a copy on top of q's root is reached through q's own mount point), ends on the top mount.
        top = q
        while top["mountpoint"] == c["mountpoint"] and top.get("parent") in r.mounts:
            top = r.mounts[top["parent"]]
        rel = _rel(c["mountpoint"], top["mountpoint"])
        base = r.mnt_fd[top["id"]]
        if up is not None:
            base, rel = up, os.path.basename(c["mountpoint"])
        try:
            fd = kernel.openat2(base, rel, os.O_PATH, _BENEATH) if rel else None
        except OSError as e:
            raise RestoreError(e.errno, f"mount {c['id']} ({c['mountpoint']}): the copy propagation was to "
                                        f"make is not there: {e.strerror}") from None
        finally:
            if up is not None:
                os.close(up)
        if fd is None or kernel.statx_mnt_id("", fd, kernel.AT_EMPTY_PATH) == \
                kernel.statx_mnt_id("", r.mnt_fd[q["id"]], kernel.AT_EMPTY_PATH):
            # (also when c sits on q's root: q's own mount point leads to c, not to q)
            if fd is not None:
                os.close(fd)
            raise RestoreError(errno.EIO, f"mount {c['id']} ({c['mountpoint']}): propagation did not make it")
        r.mnt_fd[c["id"]] = fd
        r._moved.add(c["id"])
        if q["id"] in r.referenced and mp is not None:
            r.mp_fd[c["id"]] = mp  # open_at reaches what c covers through it
        elif mp is not None:
            os.close(mp)
        if r._filling_now():
            ns_id = r.ns_of_mount[c["id"]]
            r.attached_in[ns_id] = r.attached_in.get(ns_id, 0) + 1

    def _op_seed(self, sid: int, sb: str, root: str, src) -> None:
        """A temporary mount of superblock `sb` at `root`, kept in the helper yard, for a peer group."""
        import errno
        import os

        from engine import kernel
        from engine.restore import RestoreError, _make_yard
        r = self.r
        what = f"a temporary mount of superblock {sb} for its peer group"
        if src is None or src[0] == "source":
            # (a mount of the superblock, shown with member src[1]'s source: mounted again under it
            # where that is not the superblock's first, restore's _other_source)
            m = {"id": sid, "sb": sb, "mountpoint": f"({what})"} if src is None else r.mounts[src[1]]
            base, rel = r._source(dict(m, root=root))
            r.to_service()
        else:
            base, rel = self.source(src)
        fd = self.clone_at(base, rel, what)
        if sid in self.lock_seed:
            try:
                fd = r.users.lock_flags(r.mounts[self.lock_seed[sid]], fd)   # (uses the first fd up)
            except OSError as e:
                raise RestoreError(e.errno or errno.EIO, f"{what}: {e.strerror or e}") from None
        r.to_service()
        if r.helper_yard is None:
            r.helper_yard = r.yard if r.yard is not None else _make_yard()
        try:
            os.mkdir(f"seed{-sid}", 0o700, dir_fd=r.helper_yard)
            kernel.move_mount(fd, "", r.helper_yard, f"seed{-sid}", kernel.MOVE_MOUNT_F_EMPTY_PATH)
        except OSError as e:
            os.close(fd)
            raise RestoreError(e.errno, f"{what}: {e.strerror}") from None
        self.seeds[sid] = {"id": sid, "sb": sb, "root": root, "fd": fd, "mountpoint": f"({what})"}

    def _op_make(self, mid: int, src) -> None:
        """Mount `mid`, detached: made from its superblock, or a bind of `src`."""
        r = self.r
        m = r.mounts[mid]
        if src is not None and m.get("ghost"):
            r._ghost(m["ghost"])   # its unlinked root gets its name back for the bind (restore unlinks it again)
        r.mnt_fd[mid] = r._clone(m) if src is None else r._clone(m, base=self.source(src))

    def _op_attach(self, mid: int, copies) -> None:
        """Attach mount `mid` (a namespace root: pivot into it); propagation makes `copies` with it."""
        from engine.restore import step
        r = self.r
        m = r.mounts[mid]
        if mid in self.roots:
            r.enter(self.roots[mid])
            r._pivot_into(m)
        else:
            r.enter(r.ns_of_mount[mid])
            # The copies' mount points, opened before propagation covers them.
            mps = {}
            for cid in copies:
                c = r.mounts[cid]
                # (and those of mounts not made yet that the copy is about to cover)
                r.keep_mountpoints(r.mounts[c["parent"]], c)
                mp = r.mp_fd.pop(cid, None)   # (opened before a mount covered it)
                mps[cid] = mp if mp is not None else r._mountpoint_fd(r.mounts[c["parent"]], c)
            r.enter(r.ns_of_mount[mid])
            r._attach(r.mounts[m["parent"]], m)
            for cid in copies:
                self.adopt(r.mounts[cid], mps.pop(cid), r.mp_dir.pop(cid, None))
        if r.legacy:
            self.set_flags(m)
        for cid in copies:
            self.set_flags(r.mounts[cid])
        self.attached.update([mid, *copies])
        step("attach")

    def _op_lockseed(self, sid: int, mid: int) -> None:
        """Nothing left to do: seed `sid` took mount `mid`'s flag locks when it was made."""

    def _op_member(self, mid: int, src=None) -> None:
        """Mount `mid`, cloned with the unlocked mount above it (engine/userns_cr.py lock_subtree), is
        attached with it: accounted for here."""
        from engine.restore import step
        r = self.r
        x = r.mounts[mid]
        r._moved.add(x["id"])
        r._users_call(r.users.attached, r, x)
        if r._filling_now():
            nsx = r.ns_of_mount[x["id"]]
            r.attached_in[nsx] = r.attached_in.get(nsx, 0) + 1
        if r.legacy:
            self.set_flags(x)
        self.attached.add(x["id"])
        step("attach")

    def _op_userns(self, ns_id: str) -> None:
        """Its root and locked mounts are made: the copy from inside its user namespace locks them
        and replaces it (engine/userns_cr.py); the rest is made in the copy."""
        self.r._users_call(self.r.users.copy, self.r, ns_id, self.attached)

    def _op_nscopy(self, mid: int, src: int) -> None:
        """The namespace of root mount `mid` becomes a copy of the namespace of root mount `src` (which
        holds only that root yet): its root is a peer of `src`."""
        import os

        from engine import kernel
        r = self.r
        ns_id = r.ns_of_mount[mid]
        r.enter(r.ns_of_mount[src])
        kernel.unshare(kernel.CLONE_NEWNS)
        os.close(r.ns_fd[ns_id])  # the copy of the service namespace made for it at the start
        r.ns_fd[ns_id] = os.open("self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=r.hostproc)
        r.current_ns = ns_id
        r.mnt_fd[mid] = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.set_flags(r.mounts[mid])
        self.attached.add(mid)

    def _op_prop(self, i: int, what: str) -> None:
        """Propagation `what` (private, slave, shared, unbindable) on mount or seed `i`."""
        from engine.restore import step
        self.r.set_propagation(self.mount_of(i), self.props[what])
        step("group")

    def _op_drop(self, sid: int) -> None:
        """Unmount seed `sid` (its group has its members now)."""
        import os

        from engine import kernel
        r = self.r
        s = self.seeds.pop(sid)
        r.to_service()
        os.fchdir(r.hostproc)  # the host /proc's self/fd/N names the seed itself
        try:
            # The seed and the copies propagation made in it, private first: unmounting a copy
            # whose parent is still a peer of restored mounts would unmount theirs too.
            kernel.mount(None, f"self/fd/{s['fd']}", None, kernel.MS_PRIVATE | kernel.MS_REC)
            kernel.umount2(f"self/fd/{s['fd']}", kernel.MNT_DETACH)
        finally:
            os.chdir("/")
            os.close(s["fd"])


def _check_counts(r) -> None:
    """Each restored namespace holds exactly the image's mounts: a copy the plan did not foresee
    (the kernel propagated where the simulation said it would not) fails the restore here."""
    import errno

    from engine.restore import RestoreError
    want: dict[str, int] = {}
    for mid, ns_id in r.ns_of_mount.items():
        want[ns_id] = want.get(ns_id, 0) + 1
    for ns_id, n in want.items():
        have = r.mountinfo_of(ns_id).count("\n")
        if have != n:
            raise RestoreError(errno.EIO, f"mount namespace {ns_id}: {have} mounts after building its peer groups, "
                                          f"the image has {n} (propagation made mounts the plan did not foresee)")


def in_yard(r, path: str, name: str, private: bool) -> int:
    """A copy of the service namespace's mount at `path` attached in the yard as `name`, made private
    or (`private` False) keeping the host mount's peer group or master: a way into an external group
    that later clones can start from (before 5.12 or so open_tree clones only mounts of the caller's
    namespace, not a detached clone); returns an fd on it."""
    import os
    import stat

    from engine import kernel
    fd = kernel.open_tree(kernel.AT_FDCWD, path, kernel.OPEN_TREE_CLONE)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.mkdir(name, 0o700, dir_fd=r.yard)
        else:
            # a file bind (CRIU's mnt_ext_file_bind_auto) is attached on a file, never on a directory
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=r.yard))
        kernel.move_mount(fd, "", r.yard, name, kernel.MOVE_MOUNT_F_EMPTY_PATH)
        if private:
            os.fchdir(r.hostproc)  # the host /proc's self/fd/N names the mount itself
            try:
                kernel.mount(None, f"self/fd/{fd}", None, kernel.MS_PRIVATE)
            finally:
                os.chdir("/")
    except OSError:
        os.close(fd)
        raise
    return fd
