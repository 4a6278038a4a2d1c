"""Mount trees: structure, canonical form and diff.

`Tree` indexes a list of `Mount` records once (children, roots, overmount
stacks, peer groups, masters, superblocks, a parents-first order) so that
planners can walk 10,000+ mounts without scanning the list per mount.

`canonical` names everything that a restore renumbers (mount ids, peer-group
ids, devices) by its place in a canonical walk, so two trees are the same up to
renaming exactly when their canonical texts are equal. `diff_report` explains a
difference as a findmnt-like tree. `render_tree` prints one tree for `mntcr show`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

# hashlib.blake2b is this builtin (hashlib never takes blake2 from OpenSSL); importing it alone
# spares every command hashlib's OpenSSL binding (~4 ms).
from _blake2 import blake2b

from engine.mountinfo import Mount, escape, optional_fields
from engine.records import field, record

__all__ = ["Tree", "Canonical", "canonical", "diff_report", "render_tree", "propagation_text"]


def _path_depth(path: str) -> int:
    return len([p for p in path.split("/") if p])


class Tree:
    """A list of mounts indexed as a tree plus its propagation and superblock relations.

    Mounts whose parent is not in the list (or is the mount itself) are roots.
    Everything is built in one pass plus one sort per sibling list, so building
    is O(n log n).

    Attributes:
        mounts: the mounts in input order.
        by_id: mnt_id -> Mount.
        children: mnt_id -> child mounts, in input order.
        roots: root mounts, in input order.
        order: every mount, parents before children (depth first); among
            siblings, deeper mountpoints first, so a sibling never hides the
            mountpoint of one placed after it, and an overmount of the parent
            comes after the parent's other children.
        depth: mnt_id -> depth (roots are 0).
        overmount: mnt_id -> the child mounted on top of it (same mountpoint).
        peer_groups: shared id -> member mounts.
        slaves: master id -> mounts with that master.
        propagated: propagate_from id -> mounts showing it.
        external_groups: ids used as master/propagate_from that no mount in the
            list has as its shared id (the master lives outside this tree).
        superblocks: (major, minor) -> mounts of that superblock.
    """

    def __init__(self, mounts):
        self.mounts: list[Mount] = list(mounts)
        self.by_id: dict[int, Mount] = {}
        for m in self.mounts:
            if m.mnt_id in self.by_id:
                raise ValueError(f"duplicate mount id {m.mnt_id} ({m.mountpoint})")
            self.by_id[m.mnt_id] = m
        self.children: dict[int, list[Mount]] = {m.mnt_id: [] for m in self.mounts}
        self.roots: list[Mount] = []
        self.peer_groups: dict[int, list[Mount]] = {}
        self.slaves: dict[int, list[Mount]] = {}
        self.propagated: dict[int, list[Mount]] = {}
        self.superblocks: dict[tuple[int, int], list[Mount]] = {}
        self.overmount: dict[int, Mount] = {}
        for m in self.mounts:
            parent = self.by_id.get(m.parent_id) if m.parent_id != m.mnt_id else None
            if parent is None:
                self.roots.append(m)
            else:
                self.children[parent.mnt_id].append(m)
                if m.mountpoint == parent.mountpoint:
                    self.overmount.setdefault(parent.mnt_id, m)
            if m.shared is not None:
                self.peer_groups.setdefault(m.shared, []).append(m)
            if m.master is not None:
                self.slaves.setdefault(m.master, []).append(m)
            if m.propagate_from is not None:
                self.propagated.setdefault(m.propagate_from, []).append(m)
            self.superblocks.setdefault((m.major, m.minor), []).append(m)
        referenced = set(self.slaves) | set(self.propagated)
        self.external_groups: set[int] = referenced - set(self.peer_groups)
        self.depth: dict[int, int] = {}
        self.order: list[Mount] = []
        stack = [(r, 0) for r in reversed(self._placement_order(self.roots))]
        while stack:
            m, d = stack.pop()
            self.depth[m.mnt_id] = d
            self.order.append(m)
            kids = self.children[m.mnt_id]
            if kids:
                stack.extend((c, d + 1) for c in reversed(self._placement_order(kids)))
        if len(self.order) != len(self.mounts):
            # Only a parent cycle keeps mounts from being reached from a root.
            stuck = next(m for m in self.mounts if m.mnt_id not in self.depth)
            raise ValueError(f"mount tree has a parent cycle through mount {stuck.mnt_id} ({stuck.mountpoint})")

    @staticmethod
    def _placement_order(siblings: list[Mount]) -> list[Mount]:
        return sorted(siblings, key=lambda m: (-_path_depth(m.mountpoint),
                                              m.unique_id if m.unique_id is not None else m.mnt_id))

    def __len__(self) -> int:
        return len(self.mounts)

    def parent(self, m: Mount) -> Mount | None:
        """The parent mount of `m`, or None for a root."""
        if m.parent_id == m.mnt_id:
            return None
        return self.by_id.get(m.parent_id)

    def walk(self, path: str) -> Mount | None:
        """The mount a path walk of absolute `path` from the first root ends on: at each directory
        on the way it climbs the stack of mounts there (children of the mount it is on), as the
        kernel's lookup does; not on the root itself (a process's root stays its root)."""
        if not self.roots:
            return None
        cur = self.roots[0]
        here = ""
        for part in (p for p in path.split("/") if p):
            here += "/" + part
            while True:
                nxt = next((c for c in self.children[cur.mnt_id] if c.mountpoint == here), None)
                if nxt is None:
                    break
                cur = nxt
        return cur

    def stacks(self) -> list[list[Mount]]:
        """Overmount stacks, each bottom first: mounts that sit on their parent's mountpoint."""
        tops = set(id(m) for m in self.overmount.values())
        result = []
        for bottom_id in self.overmount:
            bottom = self.by_id[bottom_id]
            if id(bottom) in tops:
                continue  # not the bottom of its stack
            chain = [bottom]
            while chain[-1].mnt_id in self.overmount:
                chain.append(self.overmount[chain[-1].mnt_id])
            result.append(chain)
        return result

    def group_masters(self) -> dict[int, set[int]]:
        """shared id -> the master ids its members have (empty when the group is not a slave)."""
        out: dict[int, set[int]] = {}
        for gid, members in self.peer_groups.items():
            out[gid] = {m.master for m in members if m.master is not None}
        return out


# --- canonical form -----------------------------------------------------------

def _h(obj) -> bytes:
    return blake2b(repr(obj).encode("utf-8", "surrogateescape"), digest_size=16).digest()


def _own_key(m: Mount) -> tuple:
    """What a mount is, without anything a restore renumbers."""
    return (m.mountpoint, m.root, m.fstype, m.source, m.mount_opts, m.super_opts, m.shared is not None,
            m.master is not None, m.propagate_from is not None, m.unbindable, m.extra_optional)


@record
class Canonical:
    """The canonical form of a mount tree.

    `text` is equal for two trees exactly when they are the same up to
    renumbering of mount ids, peer-group ids and devices, and up to line order.
    `labels` maps each mnt_id to a renumbering-invariant label: the escaped
    mountpoint, with ``#k`` (k-th in canonical order) when several mounts share it.
    """

    text: str
    order: list[Mount]
    labels: dict[int, str]
    lines: dict[int, str]
    group_names: dict[int, str]
    sb_names: dict[tuple[int, int], str]
    tree: Tree
    keys: dict[int, tuple] = field(repr=False, default_factory=dict)

    def label(self, mnt_id: int) -> str:
        """The stable label of mount `mnt_id` (KeyError if it is not in the tree)."""
        try:
            return self.labels[mnt_id]
        except KeyError:
            raise KeyError(f"mount {mnt_id} is not in the tree") from None


def _refine(tree: Tree, color: dict[int, bytes]) -> dict[int, bytes]:
    """Colour refinement over the tree, peer-group, master, propagate_from and superblock relations.

    Colours are hashes of label-free signatures, so equal trees up to renaming
    get equal colours; it stops when the partition into colours stops growing.
    """
    mounts = tree.mounts
    parts = len(set(color.values()))
    group_ids = set(tree.peer_groups) | set(tree.slaves) | set(tree.propagated)
    for _ in range(len(mounts) + 1):
        gcol = {g: _h((sorted(color[m.mnt_id] for m in tree.peer_groups.get(g, ())),
                       sorted(color[m.mnt_id] for m in tree.slaves.get(g, ())),
                       sorted(color[m.mnt_id] for m in tree.propagated.get(g, ()))))
                for g in group_ids}
        sbcol = {d: _h(sorted(color[m.mnt_id] for m in ms)) for d, ms in tree.superblocks.items()}
        new = {}
        for m in mounts:
            parent = tree.parent(m)
            new[m.mnt_id] = _h((color[m.mnt_id], color[parent.mnt_id] if parent else b"",
                                sorted(color[c.mnt_id] for c in tree.children[m.mnt_id]),
                                gcol.get(m.shared, b""), gcol.get(m.master, b""),
                                gcol.get(m.propagate_from, b""), sbcol[(m.major, m.minor)]))
        new_parts = len(set(new.values()))
        color = new
        if new_parts == parts:
            break
        parts = new_parts
    return color


def canonical(mounts) -> Canonical:
    """The canonical form of `mounts` (a list of Mount, or a Tree).

    Siblings are ordered by a label-free key (own attributes, then a hash of
    their subtree). Identical siblings can still differ in how they are tied to
    the rest (peer groups, superblocks): colour refinement over those relations
    orders them. Siblings still tied after that are interchangeable as far as
    refinement can tell; they are taken greedily, each time the one whose peer
    groups / superblock were named earliest (so the partner of a mount just
    walked comes next, as in two-member groups spread over identical siblings).
    Peer groups (shared, master, propagate_from ids) and superblocks are named
    P1.., S1.. by first appearance in the walk. Only structures that defeat
    both steps (highly regular ones no mount table is likely to have) could get
    two texts for one tree: a false difference, never a false equality, since
    the text describes the tree completely.
    """
    tree = mounts if isinstance(mounts, Tree) else Tree(mounts)
    sub = _subtree_hashes(tree)
    color = _tie_colors(tree, sub)

    def sibling_key(m: Mount):
        return (_own_key(m), sub[m.mnt_id], color[m.mnt_id] if color else b"")

    namer = _Namer()
    order, lines = _walk(tree, sibling_key, namer)
    keys = {m.mnt_id: sibling_key(m) for m in tree.mounts}
    return Canonical(text="".join("  " * d + lines[m.mnt_id] + "\n" for m, d in order),
                     order=[m for m, _ in order], labels=_labels([m for m, _ in order]), lines=lines,
                     group_names=namer.group_names, sb_names=namer.sb_names, tree=tree, keys=keys)


def _subtree_hashes(tree: Tree) -> dict[int, bytes]:
    """Bottom-up subtree hashes: children are hashed before their parent."""
    sub: dict[int, bytes] = {}
    for m in reversed(tree.order):
        sub[m.mnt_id] = _h((_own_key(m), sorted(sub[c.mnt_id] for c in tree.children[m.mnt_id])))
    return sub


def _tie_colors(tree: Tree, sub: dict[int, bytes]) -> dict[int, bytes] | None:
    """Where siblings have equal subtrees: colours that tell them apart by their ties to the rest
    (None when no siblings are alike)."""
    sibling_lists = [tree.roots] + [k for k in tree.children.values() if len(k) > 1]
    if not any(len({sub[m.mnt_id] for m in sibs}) < len(sibs) for sibs in sibling_lists):
        return None
    # Start from the position in the tree (own subtree plus the path of
    # ancestors' subtrees), then let group and superblock ties split it.
    pos: dict[int, bytes] = {}
    for m in tree.order:
        parent = tree.parent(m)
        pos[m.mnt_id] = _h((pos[parent.mnt_id] if parent else b"", sub[m.mnt_id]))
    return _refine(tree, pos)


class _Namer:
    """Names peer groups P1.. and superblocks S1.. by first appearance in the walk, and tells the
    tied runs waiting on a name that their candidates' greedy keys changed."""

    UNNAMED = 1 << 62

    def __init__(self):
        self.group_names: dict[int, str] = {}
        self.sb_names: dict[tuple[int, int], str] = {}
        self.named: dict[tuple, int] = {}  # ("g", gid) / ("s", dev) -> rank of its name
        self.waiting: dict[tuple, list] = {}  # unnamed ref -> tied candidates whose greedy key it lowers

    @staticmethod
    def refs(m: Mount) -> tuple:
        """The peer groups and superblock mount `m` is tied to."""
        return (("g", m.shared), ("g", m.master), ("g", m.propagate_from), ("s", (m.major, m.minor)))

    def greedy_key(self, m: Mount) -> tuple:
        """The ranks of m's groups and superblock names (unnamed last): lower is taken first."""
        return tuple(-1 if r[1] is None else self.named.get(r, self.UNNAMED) for r in self.refs(m))

    def give_name(self, r: tuple, names: dict, prefix: str) -> str:
        """The name of ref `r` in `names`, given now if it has none (and the waiting runs told)."""
        if r[1] not in names:
            names[r[1]] = f"{prefix}{len(names) + 1}"
            self.named[r] = len(names)
            for tied, m in self.waiting.pop(r, ()):
                if m.mnt_id not in tied.done:
                    heapq.heappush(tied.heap, (self.greedy_key(m), tied.seq[m.mnt_id], m.mnt_id))
        return names[r[1]]

    def sb(self, m: Mount) -> str:
        """The name of m's superblock."""
        return self.give_name(("s", (m.major, m.minor)), self.sb_names, "S")

    def group(self, g: int) -> str:
        """The name of peer group `g`."""
        return self.give_name(("g", g), self.group_names, "P")


class _Tied:
    """Siblings no key tells apart: picked one at a time, each time the one whose peer
    groups / superblock already have the earliest names (so partners follow each other)."""

    def __init__(self, run: list[Mount], namer: _Namer):
        self.namer = namer
        self.left = len(run)
        self.done: set[int] = set()
        self.by_id = {m.mnt_id: m for m in run}
        self.seq = {m.mnt_id: i for i, m in enumerate(run)}
        self.heap = [(namer.greedy_key(m), i, m.mnt_id) for i, m in enumerate(run)]
        heapq.heapify(self.heap)
        for m in run:
            for r in namer.refs(m):
                if r[1] is not None and r not in namer.named:
                    namer.waiting.setdefault(r, []).append((self, m))

    def pop(self) -> Mount:
        """The next sibling to walk."""
        while True:
            key, _, mid = heapq.heappop(self.heap)
            m = self.by_id[mid]
            if mid in self.done or key != self.namer.greedy_key(m):
                continue  # stale: a fresher entry was pushed when a name was given
            self.done.add(mid)
            self.left -= 1
            return m


def _walk(tree: Tree, sibling_key, namer: _Namer) -> tuple[list[tuple[Mount, int]], dict[int, str]]:
    """Walk the tree depth first, siblings in canonical order: [(mount, depth)] and each mount's
    line (groups and superblocks named as they are met)."""

    def frame(siblings: list[Mount]) -> list:
        ordered = sorted(siblings, key=sibling_key)
        runs: list = []
        for _, grp in itertools.groupby(ordered, key=sibling_key):
            run = list(grp)
            runs.append(run[0] if len(run) == 1 else _Tied(run, namer))
        runs.reverse()
        return runs

    order: list[tuple[Mount, int]] = []
    lines: dict[int, str] = {}
    stack = [(frame(tree.roots), 0)]
    while stack:
        runs, d = stack[-1]
        if not runs:
            stack.pop()
            continue
        top = runs[-1]
        if isinstance(top, _Tied):
            m = top.pop()
            if not top.left:
                runs.pop()
        else:
            m = runs.pop()
        order.append((m, d))
        sb = namer.sb(m)
        prop = optional_fields(m, namer.group)
        lines[m.mnt_id] = (f"{escape(m.mountpoint)} root={escape(m.root)} type={escape(m.fstype)} "
                           f"source={escape(m.source)} opts={','.join(m.mount_opts)} sb={sb} "
                           f"sbopts={','.join(m.super_opts)} prop={' '.join(prop) or 'private'}")
        if tree.children[m.mnt_id]:
            stack.append((frame(tree.children[m.mnt_id]), d + 1))
    return order, lines


def _labels(order: list[Mount]) -> dict[int, str]:
    """Each mount's label: its mount point, numbered (#1, #2...) in walk order where several share it."""
    mp_count: dict[str, int] = {}
    for m in order:
        mp_count[m.mountpoint] = mp_count.get(m.mountpoint, 0) + 1
    seen: dict[str, int] = {}
    labels: dict[int, str] = {}
    for m in order:
        base = escape(m.mountpoint)
        if mp_count[m.mountpoint] == 1:
            labels[m.mnt_id] = base
        else:
            seen[base] = seen.get(base, 0) + 1
            labels[m.mnt_id] = f"{base}#{seen[base]}"
    return labels


# --- rendering ----------------------------------------------------------------

def propagation_text(m: Mount) -> str:
    """The propagation of `m` as mountinfo spells it, or ``private``."""
    return " ".join(optional_fields(m)) or "private"


def _source_col(m: Mount) -> str:
    # findmnt shows a bind of a subdirectory as SOURCE[/root].
    src = escape(m.source)
    return src if m.root == "/" else f"{src}[{escape(m.root)}]"


def _tree_walk(roots, children_of):
    """Yield (item, prefix) in depth-first order with findmnt-style branch prefixes."""
    stack = [(r, "", i == len(roots) - 1, True) for i, r in reversed(list(enumerate(roots)))]
    while stack:
        item, lead, last, is_root = stack.pop()
        prefix = "" if is_root else lead + ("└─" if last else "├─")
        yield item, prefix
        kids = children_of(item)
        sub_lead = "" if is_root else lead + ("  " if last else "│ ")
        for i in range(len(kids) - 1, -1, -1):
            stack.append((kids[i], sub_lead, i == len(kids) - 1, False))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    out = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]
        out.append(" ".join(cells).rstrip() + "\n")
    return "".join(out)


def render_tree(mounts) -> str:
    """A findmnt-like tree of `mounts` with propagation and overmounts annotated."""
    tree = mounts if isinstance(mounts, Tree) else Tree(mounts)
    if not tree.mounts:
        return "(no mounts)\n"
    covers = {top.mnt_id: bottom for bottom, top in tree.overmount.items()}
    rows = [["ID", "TARGET", "SOURCE", "FSTYPE", "OPTIONS", "PROPAGATION"]]
    for m, prefix in _tree_walk(tree.roots, lambda m: tree.children[m.mnt_id]):
        prop = propagation_text(m)
        if m.mnt_id in covers:
            prop += f" [on top of {covers[m.mnt_id]}]"
        if m.mnt_id in tree.overmount:
            prop += f" [covered by {tree.overmount[m.mnt_id].mnt_id}]"
        rows.append([str(m.mnt_id), prefix + escape(m.mountpoint), _source_col(m), escape(m.fstype),
                     ",".join(m.mount_opts), prop])
    notes = []
    if tree.external_groups:
        notes.append("external masters (no member in this tree): "
                     + ", ".join(str(g) for g in sorted(tree.external_groups)))
    return _table(rows) + "".join(n + "\n" for n in notes)


# --- diff -----------------------------------------------------------------------

def _match(ca: Canonical, cb: Canonical) -> dict[int, int]:
    """Pair mounts of A with mounts of B, top down: A mnt_id -> B mnt_id.

    Children of paired parents are paired on ever weaker evidence: identical
    subtree, then same mountpoint+root+fstype, same mountpoint, same
    root+fstype+source (a moved mount). What stays unpaired was added or dropped.
    """
    ta, tb = ca.tree, cb.tree
    a_rank = {m.mnt_id: i for i, m in enumerate(ca.order)}
    b_rank = {m.mnt_id: i for i, m in enumerate(cb.order)}
    pairs: dict[int, int] = {}
    criteria = (
        lambda m, c: c.keys[m.mnt_id][:2],
        lambda m, c: (m.mountpoint, m.root, m.fstype),
        lambda m, c: m.mountpoint,
        lambda m, c: (m.root, m.fstype, m.source),
    )
    work = [(sorted(ta.roots, key=lambda m: a_rank[m.mnt_id]), sorted(tb.roots, key=lambda m: b_rank[m.mnt_id]))]
    while work:
        xs, ys = work.pop()
        for crit in criteria:
            if not xs or not ys:
                break
            buckets: dict = {}
            for y in ys:
                buckets.setdefault(crit(y, cb), deque()).append(y)
            rest_x = []
            used = set()
            for x in xs:
                cand = buckets.get(crit(x, ca))
                if cand:
                    y = cand.popleft()
                    used.add(y.mnt_id)
                    pairs[x.mnt_id] = y.mnt_id
                    work.append((sorted(ta.children[x.mnt_id], key=lambda m: a_rank[m.mnt_id]),
                                 sorted(tb.children[y.mnt_id], key=lambda m: b_rank[m.mnt_id])))
                else:
                    rest_x.append(x)
            xs = rest_x
            ys = [y for y in ys if y.mnt_id not in used]
    return pairs


def _related_key(m: Mount, what: str):
    if what == "superblock":
        return (m.major, m.minor)
    return {"peers": m.shared, "master": m.master, "propagate_from": m.propagate_from}[what]


def _related(tree: Tree, m: Mount, what: str) -> list[Mount]:
    if what == "peers":
        return tree.peer_groups.get(m.shared, []) if m.shared is not None else []
    if what == "superblock":
        return tree.superblocks[(m.major, m.minor)]
    gid = m.master if what == "master" else m.propagate_from
    if gid is None:
        return []
    # A master is identified by its members and by who else follows it.
    followers = tree.slaves.get(gid, []) if what == "master" else tree.propagated.get(gid, [])
    return tree.peer_groups.get(gid, []) + followers


def _attr_changes(a: Mount, b: Mount, ca: Canonical, cb: Canonical, pairs: dict[int, int],
                  back: dict[int, int], cache: dict) -> list[str]:
    """The attributes that differ between paired mounts, one readable line each."""
    out = []

    def plain(name, va, vb):
        if va != vb:
            out.append(f"{name}: {va} -> {vb}")

    plain("mountpoint", escape(a.mountpoint), escape(b.mountpoint))
    plain("root", escape(a.root), escape(b.root))
    plain("fstype", escape(a.fstype), escape(b.fstype))
    plain("source", escape(a.source), escape(b.source))
    plain("options", ",".join(a.mount_opts), ",".join(b.mount_opts))
    plain("superblock options", ",".join(a.super_opts), ",".join(b.super_opts))
    plain("unbindable", a.unbindable, b.unbindable)
    plain("other optional fields", " ".join(a.extra_optional) or "-", " ".join(b.extra_optional) or "-")

    # Related mounts as sorted A labels (B mounts by their A partner); only paired ones
    # compare. Cached per group / superblock so big groups cost O(size) once, not per member.
    def members_a(m, what):
        key = ("a", what, _related_key(m, what))
        if key not in cache:
            cache[key] = sorted(ca.labels[x.mnt_id] for x in _related(ca.tree, m, what) if x.mnt_id in pairs)
        return cache[key]

    def members_b(m, what):
        key = ("b", what, _related_key(m, what))
        if key not in cache:
            cache[key] = sorted(ca.labels[back[x.mnt_id]] for x in _related(cb.tree, m, what) if x.mnt_id in back)
        return cache[key]

    for what, va, vb in (("peers", a.shared, b.shared), ("master", a.master, b.master),
                         ("propagate_from", a.propagate_from, b.propagate_from)):
        name = {"peers": "shared"}.get(what, what)
        if (va is None) != (vb is None):
            sa = f"{name}:{ca.group_names[va]}" if va is not None else f"no {name}"
            sb = f"{name}:{cb.group_names[vb]}" if vb is not None else f"no {name}"
            out.append(f"{name}: {sa} -> {sb}")
            continue
        if va is None:
            continue
        ra, rb = members_a(a, what), members_b(b, what)
        if ra != rb:
            label = {"peers": "peer group", "master": "master group (its members + its slaves)",
                     "propagate_from": "propagate_from group (its members + who shows it)"}[what]
            out.append(f"{label}: {{{', '.join(ra)}}} -> {{{', '.join(rb)}}}")
    ra, rb = members_a(a, "superblock"), members_b(b, "superblock")
    if ra != rb:
        out.append(f"superblock shared with: {{{', '.join(ra)}}} -> {{{', '.join(rb)}}}")
    return out


def _summary(m: Mount, c: Canonical) -> str:
    prop = c.lines[m.mnt_id].split(" prop=", 1)[1]
    return f"{_source_col(m)} {escape(m.fstype)} {','.join(m.mount_opts)} {prop}"


_MAX_CLEAN_SIBLINGS = 12


def diff_report(a: list[Mount], b: list[Mount], names=("A", "B")) -> tuple[bool, str]:
    """Compare two mount lists up to renumbering: (equal, report).

    The report is a findmnt-like tree of both: ``!`` marks a mount whose
    attributes differ (each differing attribute below it on a ``!   * `` line),
    ``-`` a mount only in A, ``+`` one only in B. Unchanged subtrees are folded.
    Equality is decided on the canonical texts; the per-mount explanation is
    best effort, with the canonical text diff appended when it finds nothing.
    """
    ca, cb = canonical(a), canonical(b)
    na, nb = names
    if ca.text == cb.text:
        return True, f"equal: {na} and {nb} have the same mount tree ({len(ca.order)} mounts)\n"
    merged = _Merged(ca, cb)
    rows, details = _diff_rows(merged)
    table = _table(rows).splitlines(keepends=True)
    body = []
    for idx, line in enumerate(table):
        body.append(line)
        for d in details.get(idx, ()):
            body.append(f"!   * {d}\n")
    changed = [x for x, ch in merged.changes.items() if ch]
    only_a = [m for m in ca.order if m.mnt_id not in merged.pairs]
    only_b = [m for m in cb.order if m.mnt_id not in merged.back]
    head = (f"different: {len(changed)} changed, {len(only_a)} only in A, {len(only_b)} only in B\n"
            f"A = {na}\nB = {nb}\n"
            f"legend: '!' attributes differ (A -> B), '-' only in A, '+' only in B\n")
    text = head + "".join(body)
    if not changed and not only_a and not only_b:
        text += ("no single mount explains the difference (relations between mounts differ); "
                 "canonical forms:\n")
        import difflib  # only for a difference: not loaded by every restore
        text += "".join(difflib.unified_diff(ca.text.splitlines(keepends=True), cb.text.splitlines(keepends=True),
                                             fromfile="A", tofile="B"))
    return False, text


class _Merged:
    """The trees of A and B as one: nodes ("p", a_id) paired, ("a", a_id) only in A, ("b", b_id)
    only in B; each paired mount's attribute changes, and which nodes have a difference at or
    below them (`dirty`: the rest is folded)."""

    def __init__(self, ca: Canonical, cb: Canonical):
        self.ca, self.cb = ca, cb
        self.pairs = _match(ca, cb)
        self.back = {v: k for k, v in self.pairs.items()}
        self.ta, self.tb = ca.tree, cb.tree
        cache: dict = {}
        self.changes = {x: _attr_changes(self.ta.by_id[x], self.tb.by_id[y], ca, cb, self.pairs, self.back, cache)
                        for x, y in self.pairs.items()}
        self.a_rank = {m.mnt_id: i for i, m in enumerate(ca.order)}
        self.b_rank = {m.mnt_id: i for i, m in enumerate(cb.order)}
        self.roots = [("p" if m.mnt_id in self.pairs else "a", m.mnt_id) for m in self.ta.roots] + \
                     [("b", m.mnt_id) for m in self.tb.roots if m.mnt_id not in self.back]
        self.roots.sort(key=self._rank)
        self.dirty = self._dirty()

    def _rank(self, n) -> tuple:
        return (n[0] == "b", self.a_rank[n[1]] if n[0] != "b" else self.b_rank[n[1]])

    def kids(self, node) -> list:
        """The children of `node`: A's (paired or only in A), then those only in B."""
        kind, i = node
        out = []
        if kind in ("p", "a"):
            for c in self.ta.children[i]:
                out.append(("p" if c.mnt_id in self.pairs else "a", c.mnt_id))
        if kind in ("p", "b"):
            j = self.pairs[i] if kind == "p" else i
            out.extend(("b", c.mnt_id) for c in self.tb.children[j] if c.mnt_id not in self.back)
        return sorted(out, key=self._rank)

    def _dirty(self) -> set:
        dirty: set = set()
        post = []
        stack = list(self.roots)
        while stack:
            n = stack.pop()
            post.append(n)
            stack.extend(self.kids(n))
        for n in reversed(post):
            if n[0] != "p" or self.changes[n[1]] or any(k in dirty for k in self.kids(n)):
                dirty.add(n)
        return dirty

    def count_below(self, n) -> int:
        """How many nodes lie below `n`."""
        total, st = 0, list(self.kids(n))
        while st:
            k = st.pop()
            total += 1
            st.extend(self.kids(k))
        return total


def _diff_rows(t: _Merged) -> tuple[list[list[str]], dict[int, list[str]]]:
    """The report's table rows (mark, target, summary) and, by row, the attribute changes to show
    below it."""
    rows = [["", "TARGET", "SOURCE FSTYPE OPTIONS PROPAGATION"]]
    details: dict[int, list[str]] = {}
    folds: dict[tuple, int] = {}

    def children_of(n):
        # Unchanged subtrees show only their top mount; many unchanged siblings of a
        # change shrink to one "... unchanged" line.
        if n[0] == "fold" or n not in t.dirty:
            return []
        ks = t.kids(n)
        clean = [k for k in ks if k not in t.dirty]
        if len(clean) <= _MAX_CLEAN_SIBLINGS:
            return ks
        fold = ("fold", n)
        folds[fold] = len(clean) + sum(t.count_below(k) for k in clean)
        return [k for k in ks if k in t.dirty] + [fold]

    for n, prefix in _tree_walk(t.roots, children_of):
        kind, i = n
        if kind == "fold":
            rows.append(["", prefix + f"... {folds[n]} unchanged mounts", ""])
            continue
        if kind == "b":
            m = t.tb.by_id[i]
            rows.append(["+", prefix + escape(m.mountpoint), _summary(m, t.cb) + "  (only in B)"])
            continue
        m = t.ta.by_id[i]
        if kind == "a":
            rows.append(["-", prefix + escape(m.mountpoint), _summary(m, t.ca) + "  (only in A)"])
            continue
        mark = "!" if t.changes[i] else " "
        note = ""
        if n not in t.dirty and t.kids(n):
            note = f"  ({t.count_below(n)} unchanged below)"
        rows.append([mark, prefix + escape(m.mountpoint), _summary(m, t.ca) + note])
        if t.changes[i]:
            details[len(rows) - 1] = t.changes[i]
    return rows, details
