"""Summary table (terminal, markdown) and the HTML report with mount trees drawn by Graphviz.

`results` maps a test id to a row: scenario (path), params, backend, flavor,
outcome (pass / fail / error / skip), reason (first line), artifacts (the
directory name under the report dir where a failed test kept its files:
before.json, after.N.json, setup.log, logs/, images.N/).
"""

from __future__ import annotations

import difflib
import glob
import html
import json
import os
import shutil
import subprocess

from engine import mountinfo

_WIDTH = 100
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def _case(row: dict) -> str:
    return row["scenario"] + (f"[{row['params']}]" if row.get("params") else "")


def _cell(row: dict, width: int | None = _WIDTH) -> str:
    outcome = {"fail": "FAIL", "error": "ERROR"}.get(row["outcome"], row["outcome"])
    # One line per cell: a reason (e.g. a crfail backend's multi-line refusal) keeps its first line.
    reason = next((line.strip() for line in row.get("reason", "").splitlines() if line.strip()), "")
    text = f"{outcome}: {reason}" if reason else outcome
    if width and len(text) > width:
        text = text[:width - 3] + "..."
    return text


def pivot(results: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(columns 'backend/flavor', rows (case, [cell per column])) from the results."""
    columns = sorted({f"{r['backend']}/{r['flavor']}" for r in results.values()})
    cases: dict[str, dict[str, dict]] = {}
    for r in results.values():
        cases.setdefault(_case(r), {})[f"{r['backend']}/{r['flavor']}"] = r
    rows = [(case, [cols.get(c) for c in columns]) for case, cols in sorted(cases.items())]
    return columns, rows


def counts(results: dict) -> str:
    """'N pass, N fail, ...'."""
    c: dict[str, int] = {}
    for r in results.values():
        c[r["outcome"]] = c.get(r["outcome"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(c.items()))


def table(results: dict) -> str:
    """Plain-text table: one row per scenario case, one column per backend/flavor."""
    columns, rows = pivot(results)
    grid = [["scenario"] + columns] + [[case] + [_cell(r) if r else "-" for r in cells] for case, cells in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    out = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in grid]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append(counts(results))
    return "\n".join(out)


def markdown(results: dict) -> str:
    """The summary as a markdown table."""
    columns, rows = pivot(results)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    out = ["# zdtm summary", "", counts(results), "", "| scenario | " + " | ".join(columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
    for case, cells in rows:
        out.append(f"| {esc(case)} | " + " | ".join(esc(_cell(r, None)) if r else "-" for r in cells) + " |")
    return "\n".join(out) + "\n"


# --- graphs ---------------------------------------------------------------------

def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_source(mounts, highlight: set[str], title: str, topology=None) -> str:
    """A Graphviz digraph of a mount tree: parent edges, peer groups (dashed, one colour each),
    master links (dotted arrows slave -> master group); mounts labelled in `highlight` are red."""
    if topology is None:
        from engine import topology
    canon = topology.canonical(mounts)
    by_id = {m.mnt_id: m for m in mounts}
    gcolor = {}
    for gid, name in canon.group_names.items():
        gcolor[gid] = _PALETTE[(int(name[1:]) - 1) % len(_PALETTE)]
    lines = ["digraph mounts {", f"  label={_q(title)}; labelloc=t; rankdir=TB;",
             '  node [shape=box, fontname="monospace", fontsize=9, style=filled, fillcolor="#f4f4f4"];',
             '  edge [color="#555555"];']
    members: dict[int, list[int]] = {}
    for m in canon.order:
        label = canon.label(m.mnt_id)
        prop = []
        if m.shared is not None:
            prop.append(f"shared:{canon.group_names[m.shared]}")
            members.setdefault(m.shared, []).append(m.mnt_id)
        if m.master is not None:
            prop.append(f"master:{canon.group_names[m.master]}")
        if m.unbindable:
            prop.append("unbindable")
        text = f"{label}\n{m.fstype} {m.source} root={m.root}\n{','.join(m.mount_opts)}\n{' '.join(prop) or 'private'}"
        attrs = [f"label={_q(text)}"]
        if label in highlight:
            attrs += ['fillcolor="#ffb3b3"', 'color="#cc0000"', "penwidth=2"]
        elif m.shared is not None:
            attrs.append(f'color="{gcolor[m.shared]}"')
        lines.append(f"  m{m.mnt_id} [{', '.join(attrs)}];")
    for m in canon.order:
        if m.parent_id in by_id and m.parent_id != m.mnt_id:
            lines.append(f"  m{m.parent_id} -> m{m.mnt_id};")
    for gid, ids in members.items():
        for a, b in zip(ids, ids[1:]):
            lines.append(f'  m{a} -> m{b} [style=dashed, dir=none, color="{gcolor[gid]}", constraint=false, '
                         f'label={_q(canon.group_names[gid])}, fontcolor="{gcolor[gid]}", fontsize=8];')
    for m in canon.order:
        if m.master is not None and members.get(m.master):
            lines.append(f'  m{m.mnt_id} -> m{members[m.master][0]} [style=dotted, color="{gcolor[m.master]}", '
                         f'constraint=false, label="master", fontsize=8];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(dot: str) -> str:
    """SVG from Graphviz `dot`, or the dot source in <pre> when dot is not installed."""
    exe = shutil.which("dot")
    if exe is None:
        return "<p>(graphviz `dot` is not installed: apt-get install graphviz)</p><pre>" + html.escape(dot) + "</pre>"
    proc = subprocess.run([exe, "-Tsvg"], input=dot.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)
    if proc.returncode != 0:
        return f"<pre>dot failed: {html.escape(proc.stderr.decode(errors='replace'))}</pre>"
    svg = proc.stdout.decode(errors="replace")
    return svg[svg.find("<svg"):] if "<svg" in svg else svg


def differing_labels(a, b, topology=None) -> set[str]:
    """Labels of mounts whose canonical line differs between trees `a` and `b` (or that only one has)."""
    if topology is None:
        from engine import topology
    ca, cb = topology.canonical(a), topology.canonical(b)
    la = {ca.label(i): line for i, line in ca.lines.items()}
    lb = {cb.label(i): line for i, line in cb.lines.items()}
    return {k for k in set(la) | set(lb) if la.get(k) != lb.get(k)}


# --- files ------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _failure_html(report_dir: str, nodeid: str, row: dict) -> str:
    d = os.path.join(report_dir, row.get("artifacts", ""))
    out = [f"<h2 id={_q(nodeid)}>{html.escape(nodeid)}</h2>",
           f"<p><b>{html.escape(row['outcome'].upper())}</b>: {html.escape(row.get('reason', ''))}</p>",
           f"<p>files: <code>{html.escape(d)}</code></p>"]
    setup_log = _read(os.path.join(d, "setup.log"))
    if row["outcome"] == "error" and setup_log:
        out.append("<h3>setup output</h3><pre>" + html.escape(setup_log) + "</pre>")
    before = _read(os.path.join(d, "before.json"))
    afters = sorted(glob.glob(os.path.join(d, "after.*.json")))
    if before and afters:
        b, a = json.loads(before), json.loads(_read(afters[-1]))
        for i, (pb, pa) in enumerate(zip(b["procs"], a["procs"])):
            mb, ma = mountinfo.parse(pb["mountinfo"]), mountinfo.parse(pa["mountinfo"])
            hl = differing_labels(mb, ma)
            out.append(f"<h3>process P{i}: mount tree before / after "
                       f"({len(hl)} differing mount(s) highlighted)</h3>")
            out.append('<table class="side"><tr><td>' + render_svg(dot_source(mb, hl, "before dump"))
                       + "</td><td>" + render_svg(dot_source(ma, hl, f"after restore ({os.path.basename(afters[-1])})"))
                       + "</td></tr></table>")
        bt = _read(os.path.join(d, "before.txt")) or ""
        at = _read(afters[-1][:-5] + ".txt") or ""
        diff = "\n".join(difflib.unified_diff(bt.splitlines(), at.splitlines(), "before", "after", lineterm=""))
        out.append("<h3>compared state, unified diff</h3><pre>" + html.escape(diff) + "</pre>")
    logs = sorted(glob.glob(os.path.join(d, "logs", "*")))
    if logs:
        out.append("<h3>backend logs</h3><ul>" + "".join(
            f"<li><code>{html.escape(p)}</code></li>" for p in logs) + "</ul>")
    return "\n".join(out)


def write(report_dir: str, results: dict) -> str:
    """Write report.html and summary.md into `report_dir`; return the HTML path."""
    os.makedirs(report_dir, exist_ok=True)
    with open(os.path.join(report_dir, "summary.md"), "w") as f:
        f.write(markdown(results))
    columns, rows = pivot(results)
    colour = {"pass": "#c8f0c8", "fail": "#f5b5b5", "error": "#f5d0a0", "skip": "#e8e8e8"}
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>zdtm report</title><style>",
             "body{font-family:sans-serif} td,th{border:1px solid #aaa;padding:2px 6px;font-size:12px}",
             "table{border-collapse:collapse} table.side td{vertical-align:top;border:none}",
             "pre{background:#f8f8f8;padding:6px;font-size:11px;overflow-x:auto}</style></head><body>",
             f"<h1>zdtm report</h1><p>{html.escape(counts(results))}</p>",
             "<table><tr><th>scenario</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
    ids = {id(r): nodeid for nodeid, r in results.items()}
    for case, cells in rows:
        tds = []
        for r in cells:
            if r is None:
                tds.append("<td>-</td>")
                continue
            text = html.escape(_cell(r, 120))
            if r["outcome"] in ("fail", "error"):
                text = f"<a href='#{html.escape(ids[id(r)])}'>{text}</a>"
            tds.append(f"<td style='background:{colour.get(r['outcome'], '#fff')}'>{text}</td>")
        parts.append(f"<tr><td>{html.escape(case)}</td>{''.join(tds)}</tr>")
    parts.append("</table>")
    for nodeid, row in sorted(results.items()):
        if row["outcome"] in ("fail", "error"):
            parts.append(_failure_html(report_dir, nodeid, row))
    parts.append("</body></html>")
    path = os.path.join(report_dir, "report.html")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path
