"""Mount trees of a snapshot drawn with Graphviz, one picture per mount namespace.

Input is a snapshot as the runner keeps it (before.json / after.N.json:
per process its mountinfo and compared text, the namespace partition). Each
mount namespace becomes one left-to-right tree (the report puts them side by
side):

- a node per mount, children in canonical order under their parent;
- peer groups: one colour per group (border and tint), named G1, G2... by
  first appearance over all namespaces, so a group that spans namespaces has
  the same name and colour in each picture;
- master -> slave: a dotted arrow from the master group's first member in
  the namespace to the slave (a master outside the namespace is a separate
  node "G3 (outside this namespace)");
- read-only mounts grey with a red "ro", unbindable ones with a dashed border;
- an overmount hangs from what it covers on a bold red edge; mounts hidden
  beneath an overmount are drawn faded with "hidden" and by what;
- open files, cwd and root of the processes listed on the mount they are on
  (fds on detached mounts on a "detached" node);
- `highlight` (canonical labels) draws differing mounts red.

Every string from the snapshot goes through `_text` (escaped for Graphviz's
HTML-like labels, control characters shown as \\xNN); node names are
generated, never taken from the snapshot. `render` runs `dot` once for many
graphs and strips what an inline SVG does not need (XML prolog, comments,
ids, titles), which keeps a 200-scenario page small.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess

from engine import mountinfo

MAX_NODES = 60          # per picture; the rest is counted on one "not drawn" node
MAX_FILES = 4           # open files listed per mount
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f")
HIGHLIGHT_FILL = "#ffb3b3"
_CTRL = re.compile(r"[\x00-\x1f\x7f]")
_FD = re.compile(r"^fd (\d+): (.*) flags=(\S+) pos=(\S+) mnt=(.*)$")
_PLACE = re.compile(r"^(root|cwd): (.*) mnt=(.*)$")
_MNT_PART = re.compile(r"\{([^}]*)\}")


def _text(value, limit: int = 80) -> str:
    """`value` as safe text of an HTML-like Graphviz label (escaped, no control characters, shortened)."""
    s = _CTRL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    if len(s) > limit:
        s = s[:limit - 1] + "…"
    return html.escape(s, quote=True)


def group_colour(name: str) -> str:
    """The colour of peer group `name` ("G3")."""
    return PALETTE[(int(name[1:]) - 1) % len(PALETTE)]


class Namespace:
    """One mount namespace of a snapshot: its processes, mounts, canonical form, files per mount."""

    def __init__(self, index: int, procs: list[int], mounts, canon):
        self.index = index
        self.procs = procs                  # indices P<i> of the snapshot's processes
        self.mounts = mounts
        self.canon = canon
        self.files: dict[str, list[str]] = {}   # mount label (or "detached") -> lines

    @property
    def title(self) -> str:
        return f"mount namespace {self.index + 1}: " + ", ".join(f"P{i}" for i in self.procs)


def _mnt_groups(namespaces_text: str, count: int) -> list[list[int]]:
    """Process indices per mount namespace from the snapshot's partition text ("mnt: {P0,P1} {P2}")."""
    for line in (namespaces_text or "").splitlines():
        if line.startswith("mnt:"):
            groups = []
            for part in _MNT_PART.findall(line):
                ids = [int(p[1:]) for p in part.split(",") if p.startswith("P") and p[1:].isdigit()]
                if ids:
                    groups.append(sorted(ids))
            seen = {i for g in groups for i in g}
            if seen == set(range(count)):
                return sorted(groups)
    return [[i] for i in range(count)]  # unknown partition: one picture per process


def _files(proc_index: int, text: str) -> list[tuple[str, str]]:
    """(mount label, what) for the open files, cwd and root in a process's compared text."""
    out = []
    for line in text.splitlines():
        m = _FD.match(line)
        if m:
            fd, path, where = m.group(1), m.group(2), m.group(5)
            if int(fd) <= 2 and path == "/dev/null":
                continue  # the holder's stdio: on every scenario, says nothing
            out.append((where, f"P{proc_index} fd {fd}: {path}"))
            continue
        m = _PLACE.match(line)
        if m:
            out.append((m.group(3), f"P{proc_index} {m.group(1)}: {m.group(2)}"))
    return out


def namespaces(snap: dict, topology=None) -> list[Namespace]:
    """The mount namespaces of snapshot `snap` (a before.json / after.N.json dict), in partition order."""
    if topology is None:
        from engine import topology
    procs = snap.get("procs") or []
    out = []
    for index, members in enumerate(_mnt_groups(snap.get("namespaces", ""), len(procs))):
        mounts = mountinfo.parse(procs[members[0]]["mountinfo"])
        ns = Namespace(index, members, mounts, topology.canonical(mounts))
        for i in members:
            for where, what in _files(i, procs[i].get("text", "")):
                ns.files.setdefault(where, []).append(what)
        out.append(ns)
    # A file on a mount of another namespace of the tree ("other-ns:LABEL") is drawn there.
    for ns in out:
        for where in [w for w in ns.files if w.startswith("other-ns:")]:
            label = where[len("other-ns:"):]
            home = next((o for o in out if o is not ns and label in o.canon.labels.values()), None)
            if home is not None:
                home.files.setdefault(label, []).extend(f"{f} (from namespace {ns.index + 1})"
                                                        for f in ns.files.pop(where))
    return out


def group_names(spaces: list[Namespace]) -> dict[int, str]:
    """Kernel peer-group id -> G1, G2... by first appearance (namespace order, canonical order)."""
    names: dict[int, str] = {}
    for ns in spaces:
        for m in ns.canon.order:
            for gid in (m.shared, m.master):
                if gid is not None and gid not in names:
                    names[gid] = f"G{len(names) + 1}"
    return names


def group_homes(spaces: list[Namespace]) -> dict[int, list[int]]:
    """Kernel peer-group id -> indices of the namespaces where the group has members."""
    out: dict[int, list[int]] = {}
    for ns in spaces:
        for m in ns.mounts:
            if m.shared is not None and ns.index not in out.setdefault(m.shared, []):
                out[m.shared].append(ns.index)
    return out


def _hidden_by(ns: Namespace) -> dict[int, str]:
    """mnt_id -> label of the mount that hides it from path lookup (an overmount of its parent,
    or a sibling mounted later on a path above its mount point)."""
    tree, canon = ns.canon.tree, ns.canon
    out = {}
    for m in ns.mounts:
        parent = tree.parent(m)
        if parent is None:
            continue
        cover = tree.overmount.get(parent.mnt_id)
        if cover is not None and cover.mnt_id != m.mnt_id:
            out[m.mnt_id] = canon.labels[cover.mnt_id]
            continue
        for s in tree.children[parent.mnt_id]:
            if s.mnt_id != m.mnt_id and s.mountpoint != m.mountpoint and \
                    m.mountpoint.startswith(s.mountpoint.rstrip("/") + "/"):
                out[m.mnt_id] = canon.labels[s.mnt_id]
                break
    return out


def dot_source(ns: Namespace, names: dict[int, str], highlight: set[str] = frozenset(), title: str = "",
               homes: dict[int, list[int]] | None = None) -> str:
    """Graphviz source of one namespace's tree (see the module docstring); `homes` (group_homes)
    says in which other namespace a master group outside this one lives."""
    canon = ns.canon
    drawn = canon.order[:MAX_NODES]
    ids = {m.mnt_id: f"n{i}" for i, m in enumerate(drawn)}
    hidden = _hidden_by(ns)
    lines = ["digraph mounts {",
             f"  graph [rankdir=LR, ordering=out, nodesep=0.08, ranksep=0.25, fontname=\"sans-serif\", "
             f"fontsize=10, labelloc=t, labeljust=l, label=<{_text(title or ns.title, 120)}>];",
             '  node [shape=box, style="rounded,filled", fontname="monospace", fontsize=8, margin="0.12,0.03", '
             'fillcolor="#ffffff", color="#555555"];',
             '  edge [color="#777777", arrowsize=0.5, fontname="sans-serif", fontsize=7];']
    lines += [_mount_node(m, ns, names, hidden, highlight, ids[m.mnt_id]) for m in drawn]
    lines += _tree_edges(canon.tree, drawn, ids)
    lines += _master_edges(ns, names, drawn, ids, homes)
    lines += _notes(ns, drawn, ids)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mount_node(m, ns: Namespace, names: dict[int, str], hidden: dict[int, str], highlight, node_id: str) -> str:
    """The node of mount `m`: its label, source, propagation, what hides it and the files on it."""
    label = ns.canon.labels[m.mnt_id]
    rows = [f"<B>{_text(label)}</B>"]
    src = f"{m.fstype} {m.source}" + (f" root={mountinfo.escape(m.root)}" if m.root != "/" else "")
    rows.append(_text(src))
    flags = []
    if "ro" in m.mount_opts:
        flags.append('<FONT COLOR="#b00000"><B>ro</B></FONT>')
    if m.shared is not None:
        g = names[m.shared]
        flags.append(f'<FONT COLOR="{group_colour(g)}"><B>shared {g}</B></FONT>')
    if m.master is not None:
        g = names[m.master]
        flags.append(f'<FONT COLOR="{group_colour(g)}">slave of {g}</FONT>')
    if m.unbindable:
        flags.append("<B>unbindable</B>")
    if not (m.shared or m.master or m.unbindable):
        flags.append("private")
    rows.append(", ".join(flags))
    if m.mnt_id in hidden:
        rows.append(f'<FONT COLOR="#888888"><I>hidden beneath {_text(hidden[m.mnt_id])}</I></FONT>')
    files = ns.files.get(label, [])
    rows += [f'<FONT COLOR="#00308f">● {_text(f)}</FONT>' for f in files[:MAX_FILES]]
    if len(files) > MAX_FILES:
        rows.append(f"… {len(files) - MAX_FILES} more")
    attrs = ["label=<" + '<BR ALIGN="LEFT"/>'.join(rows) + '<BR ALIGN="LEFT"/>>']
    style = ["rounded", "filled"]
    if m.unbindable:
        style.append("dashed")
    if label in highlight:
        attrs += [f'fillcolor="{HIGHLIGHT_FILL}"', 'color="#cc0000"', "penwidth=2.5"]
    else:
        if m.shared is not None:
            c = group_colour(names[m.shared])
            attrs += [f'color="{c}"', f'fillcolor="{c}22"', "penwidth=2"]
        elif "ro" in m.mount_opts:
            attrs.append('fillcolor="#e8e8e8"')
        if m.mnt_id in hidden:
            attrs.append('fontcolor="#777777"')
    attrs.append(f'style="{",".join(style)}"')
    return f"  {node_id} [{', '.join(attrs)}];"


def _tree_edges(tree, drawn: list, ids: dict[int, str]) -> list[str]:
    """Parent -> child edges (an overmount's in red)."""
    lines = []
    for m in drawn:
        parent = tree.parent(m)
        if parent is None or parent.mnt_id not in ids:
            continue
        if tree.overmount.get(parent.mnt_id) is m:
            lines.append(f'  {ids[parent.mnt_id]} -> {ids[m.mnt_id]} [color="#cc0000", penwidth=2, '
                         'label=<<FONT COLOR="#cc0000">overmounted by</FONT>>];')
        else:
            lines.append(f"  {ids[parent.mnt_id]} -> {ids[m.mnt_id]};")
    return lines


def _master_edges(ns: Namespace, names: dict[int, str], drawn: list, ids: dict[int, str],
                  homes: dict[int, list[int]] | None) -> list[str]:
    """master -> slave: from the master group's first drawn member here, else an outside node."""
    lines = []
    first = {}
    for m in drawn:
        if m.shared is not None:
            first.setdefault(m.shared, m.mnt_id)
    outside = {}
    for m in drawn:
        if m.master is None:
            continue
        g = names[m.master]
        c = group_colour(g)
        if m.master in first:
            src = ids[first[m.master]]
        else:
            src = outside.get(m.master)
            if src is None:
                src = outside[m.master] = f"x{len(outside)}"
                where = [i + 1 for i in (homes or {}).get(m.master, []) if i != ns.index]
                place = (f"in mount namespace {', '.join(map(str, where))}" if where
                         else "outside the dumped tree")
                lines.append(f'  {src} [shape=ellipse, style="filled,dashed", fillcolor="{c}22", color="{c}", '
                             f"label=<{g}<BR/>({place})>];")
        lines.append(f'  {src} -> {ids[m.mnt_id]} [style=dotted, color="{c}", penwidth=1.5, constraint=false, '
                     f'label=<<FONT COLOR="{c}">slave</FONT>>];')
    return lines


def _notes(ns: Namespace, drawn: list, ids: dict[int, str]) -> list[str]:
    """The files on detached mounts, and how many mounts were not drawn."""
    lines = []
    canon = ns.canon
    detached = ns.files.get("detached", [])
    if detached:
        rows = [f"● {_text(f)}" for f in detached[:MAX_FILES]]
        if len(detached) > MAX_FILES:
            rows.append(f"… {len(detached) - MAX_FILES} more")
        lines.append('  detached [shape=box, style="filled,dashed", fillcolor="#fff5cc", '
                     'label=<<B>detached mount(s)</B><BR ALIGN="LEFT"/>'
                     + '<BR ALIGN="LEFT"/>'.join(rows) + '<BR ALIGN="LEFT"/>>];')
    if len(canon.order) > len(drawn):
        more = len(canon.order) - len(drawn)
        lines.append(f'  more [shape=note, fillcolor="#fff5cc", label=<{more} more mounts, not drawn>];')
        if drawn:
            lines.append(f"  {ids[drawn[0].mnt_id]} -> more [style=dashed];")
    return lines


# --- rendering ------------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)
_TITLE = re.compile(r"<title>.*?</title>\s*", re.S)
_ID = re.compile(r' id="[^"]*"')


def _clean(svg: str) -> str:
    svg = svg[svg.find("<svg"):]
    svg = _COMMENT.sub("", svg)
    svg = _TITLE.sub("", svg)
    return _ID.sub("", svg).strip()


def render(sources: list[str], timeout: float = 300.0) -> list[str]:
    """SVG text per Graphviz source (one `dot` run for all); without `dot` (or when it fails on
    one), that picture is a note naming the problem and the source in a <pre>."""
    if not sources:
        return []
    exe = shutil.which("dot")
    if exe is None:
        return [_fallback("graphviz `dot` is not installed (apt-get install graphviz)", s) for s in sources]
    proc = subprocess.run([exe, "-Tsvg"], input="".join(sources).encode(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)
    parts = proc.stdout.decode(errors="replace").split("</svg>")[:-1]
    if proc.returncode == 0 and len(parts) == len(sources):
        return [_clean(p + "</svg>") for p in parts]
    if len(sources) == 1:
        return [_fallback("dot failed: " + proc.stderr.decode(errors="replace").strip(), sources[0])]
    return [render([s], timeout)[0] for s in sources]  # find the one that broke it


def _fallback(why: str, source: str) -> str:
    return f"<p class='note'>{html.escape(why)}</p><pre>{html.escape(source)}</pre>"


def differing_labels(before: list[Namespace], after: list[Namespace]) -> list[set[str]]:
    """Per namespace index: labels of mounts whose canonical line differs between the snapshots
    (or that only one has); a namespace only one snapshot has differs entirely."""
    out = []
    for i in range(max(len(before), len(after))):
        a = before[i] if i < len(before) else None
        b = after[i] if i < len(after) else None
        la, lb = _signatures(a), _signatures(b)
        out.append({k for k in set(la) | set(lb) if la.get(k) != lb.get(k)})
    return out


def _signatures(ns: Namespace | None) -> dict[str, tuple]:
    """label -> (canonical line, labels of its peers, labels of its master group's members): a mount
    that kept its own line but lost or gained a peer differs too."""
    if ns is None:
        return {}
    labels, tree = ns.canon.labels, ns.canon.tree
    members = {g: sorted(labels[m.mnt_id] for m in ms) for g, ms in tree.peer_groups.items()}
    return {labels[m.mnt_id]: (ns.canon.lines[m.mnt_id], tuple(members.get(m.shared, ())),
                               tuple(members.get(m.master, ()))) for m in ns.mounts}
