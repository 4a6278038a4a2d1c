"""The HTML report: matrix, failures, timings and one section per scenario, in one file.

Input is a list of result rows (see zdtm.report: scenario, params, backend,
flavor, kernel, outcome, reason, message, description, timings, artifacts)
each with ``run_dir``: the report directory of the run it came from, where
its kept files are (``run_dir/artifacts/before.json``...). One run (pytest
--report) and many merged runs (`mntcr report merge`) give the same page.

The page is self-contained and static: inline CSS, inline SVG, no script, and
a Content-Security-Policy that forbids loading anything, so it opens from a CI
artifact without network and a string that slipped through unescaped could not
run. Every string that comes from a scenario, a backend or a kept file is
escaped here (`_e`); pictures come from zdtm.report_graph, which escapes its
own labels. Scenario sections are <details> (open only on small pages), so a
200-scenario page lays out only what is opened.
"""

from __future__ import annotations

import base64
import difflib
import glob
import html
import json
import os
import re
import statistics
import urllib.parse

from zdtm import report_graph
from zdtm.report_record import GOLDEN_FILE, PHASES

OPEN_ALL_UP_TO = 30      # scenario sections start open, their pictures inline, up to this many cases
SLOWEST = 10             # rows of the "slowest" timing table
SLOW_FACTOR = 3.0        # a dump or restore this many times its column's median is flagged in the matrix
SLOW_MIN = 1.0           # ... when it also takes at least this many seconds
# criu: "Error (criu/mount.c:123): ..."; mntcr: "mntcr restore: <mount>: <reason>" on stderr.
_ERROR_LINE = re.compile(r"\bError\b|\berror:|^mntcr \w+: ")
_ITER = re.compile(r"\.(\d+)\.")          # after.N.json
_LOG_ITER = re.compile(r"iter(\d+)")        # dump.iterN.log

CSS = """
body{font-family:sans-serif;margin:0 1.5em 3em;color:#222;font-size:14px}
h1{margin:.6em 0 .2em}h2{border-bottom:2px solid #ccc;margin-top:1.6em}h3{margin:.8em 0 .3em}
nav a{margin-right:1em}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px;font-size:12px;text-align:left;
vertical-align:top}
th{background:#eee}td.pass{background:#c8f0c8}td.fail{background:#f5b5b5}td.error{background:#f5d0a0}
td.skip{background:#e8e8e8;color:#555}td.none{color:#aaa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.reason{color:#444;font-size:11px}
.slow{display:inline-block;background:#ffe08a;border-radius:3px;padding:0 3px;font-size:11px;margin-left:3px}
pre{background:#f6f6f6;border:1px solid #e2e2e2;padding:6px;font-size:11px;overflow-x:auto;max-height:40em;
white-space:pre-wrap}
.trees{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.trees figure{margin:0;border:1px solid #ddd;padding:4px;background:#fff;max-width:100%;overflow-x:auto}
.trees figcaption{font-size:11px;color:#555}
.pair{display:flex;gap:12px;align-items:flex-start;margin-bottom:8px}
.pair>div{border:1px solid #ddd;padding:4px;overflow-x:auto;flex:1 1 0;min-width:0}
.pair svg,.trees svg,img.tree{max-width:100%;height:auto}
details.case{border:1px solid #ddd;margin:4px 0;padding:2px 8px}details.case>summary{cursor:pointer}
details.case[open]{padding-bottom:8px}
.badge{display:inline-block;border-radius:3px;padding:0 4px;margin-left:4px;font-size:11px}
.badge.pass{background:#c8f0c8}.badge.fail{background:#f5b5b5}.badge.error{background:#f5d0a0}
.badge.skip{background:#e8e8e8}
.desc{white-space:pre-wrap;margin:.3em 0}
section.failure{border-left:4px solid #d33;padding-left:10px;margin:1em 0}
.bar{display:inline-block;height:8px;background:#6a8fd0;vertical-align:middle}
.note{color:#666;font-size:12px}
.legend span{margin-right:1.2em;font-size:12px}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def case_of(row: dict) -> str:
    """The matrix row of a result: scenario path plus its parameter combination."""
    return row["scenario"] + (f"[{row['params']}]" if row.get("params") else "")


def column_of(row: dict) -> tuple[str, str, str]:
    """The matrix column of a result: (kernel, engine, flavor kind)."""
    return (row.get("kernel") or "?", row["backend"], row["flavor"].split(":", 1)[0])


def _short(text: str, width: int) -> str:
    line = next((x.strip() for x in (text or "").splitlines() if x.strip()), "")
    return line if len(line) <= width else line[:width - 1] + "…"


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _json(path: str) -> dict | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _files_dir(row: dict) -> str | None:
    if not row.get("run_dir") or not row.get("artifacts"):
        return None
    d = os.path.join(row["run_dir"], row["artifacts"])
    return d if os.path.isdir(d) else None


class _Page:
    """Collects the page's pieces; pictures are rendered in one `dot` run at the end."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.parts: list = []
        self.dots: list[str] = []
        self.cache: dict[str, int] = {}

    def add(self, *texts: str) -> None:
        self.parts.extend(texts)

    def picture(self, dot: str, inline: bool = True) -> None:
        """A placeholder for the SVG of `dot` (equal sources are rendered once): inline, or as a
        lazily loaded image (the browser then neither builds its DOM nor decodes it until shown)."""
        if dot not in self.cache:
            self.cache[dot] = len(self.dots)
            self.dots.append(dot)
        self.parts.append(_Picture(self.cache[dot], inline))

    def link(self, path: str, text: str | None = None) -> str:
        rel = urllib.parse.quote(os.path.relpath(path, self.out_dir))  # a '#' or '?' in a name stays a name
        return f"<a href='{_e(rel)}'>{_e(text or os.path.basename(path))}</a>"

    def text(self) -> str:
        svgs = report_graph.render(self.dots)
        out = []
        for p in self.parts:
            if not isinstance(p, _Picture):
                out.append(p)
            elif p.inline or not svgs[p.index].startswith("<svg"):
                out.append(svgs[p.index])
            else:
                data = base64.b64encode(svgs[p.index].encode()).decode()
                out.append(f"<img class='tree' loading='lazy' alt='mount tree' src='data:image/svg+xml;base64,{data}'>")
        return "".join(out)


class _Picture:
    def __init__(self, index: int, inline: bool):
        self.index = index
        self.inline = inline


def _anchors(rows: list[dict]) -> dict[int, str]:
    """A unique anchor per row: its test id, suffixed when several runs share it."""
    seen: dict[str, int] = {}
    out = {}
    for row in rows:
        base = row.get("nodeid") or case_of(row)
        seen[base] = seen.get(base, 0) + 1
        out[id(row)] = base if seen[base] == 1 else f"{base}~{seen[base]}"
    return out


def _columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    return sorted({column_of(r) for r in rows})


def _column_label(col, several_flavors: bool) -> str:
    return f"{col[1]} ({col[2]})" if several_flavors else col[1]


def counts(rows: list[dict]) -> str:
    """'N pass, N fail, ...'."""
    c: dict[str, int] = {}
    for r in rows:
        c[r["outcome"]] = c.get(r["outcome"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(c.items()))


# --- sections -------------------------------------------------------------------------

def _slow(rows) -> dict[int, list[str]]:
    """id(row) -> "restore 12.3 s" for the dumps and restores far above their column's median."""
    medians = {}
    for col in {column_of(r) for r in rows}:
        for p in ("dump", "restore"):
            vals = [r["timings"][p] for r in rows if column_of(r) == col and p in (r.get("timings") or {})]
            if vals:
                medians[(col, p)] = statistics.median(vals)
    out: dict[int, list[str]] = {}
    for r in rows:
        for p in ("dump", "restore"):
            v = (r.get("timings") or {}).get(p)
            m = medians.get((column_of(r), p))
            if v is not None and m is not None and v >= SLOW_MIN and v > SLOW_FACTOR * m:
                out.setdefault(id(r), []).append(f"slow {p} {v:.1f} s")
    return out


def _matrix(page: _Page, rows, cases, columns, anchors, case_ids) -> None:
    several = len({c[2] for c in columns}) > 1
    slow = _slow(rows)
    kernels: list[tuple[str, int]] = []
    for col in columns:
        if kernels and kernels[-1][0] == col[0]:
            kernels[-1] = (col[0], kernels[-1][1] + 1)
        else:
            kernels.append((col[0], 1))
    page.add("<h2 id='matrix'>Matrix</h2>",
             "<p class='note'>rows: scenario and parameters; columns: kernel x engine. "
             "Failures link to their section, scenario names to what the scenario built; "
             f"<span class='slow'>slow restore</span>: more than {SLOW_FACTOR:g} times the median of its "
             "column.</p>",
             "<table class='matrix'><tr><th rowspan='2'>scenario</th>",
             "".join(f"<th colspan='{n}'>kernel {_e(k)}</th>" for k, n in kernels), "</tr><tr>",
             "".join(f"<th>{_e(_column_label(c, several))}</th>" for c in columns), "</tr>")
    for case, by_col in cases.items():
        page.add(f"<tr><td><a href='#{_e(case_ids[case])}'>{_e(case)}</a></td>")
        for col in columns:
            r = by_col.get(col)
            if r is None:
                page.add("<td class='none'>-</td>")
                continue
            outcome = r["outcome"]
            word = {"fail": "FAIL", "error": "ERROR"}.get(outcome, outcome)
            reason = _short(r.get("reason", ""), 70)
            times = r.get("timings") or {}
            tip = (r.get("reason") or "") + ("\n" if r.get("reason") and times else "") + \
                " ".join(f"{p} {times[p]:.2f}s" for p in PHASES if p in times)
            cell = _e(word) + (f": <span class='reason'>{_e(reason)}</span>" if reason else "")
            cell += "".join(f"<span class='slow'>{_e(x)}</span>" for x in slow.get(id(r), ()))
            if outcome in ("fail", "error"):
                cell = f"<a href='#{_e(anchors[id(r)])}'>{cell}</a>"
            page.add(f"<td class='{_e(outcome)}' title='{_e(tip)}'>{cell}</td>")
        page.add("</tr>")
    page.add("</table>")


def first_error_line(files_dir: str) -> tuple[str, str] | None:
    """(log file, its first error line) over the kept backend logs, in iteration and name order."""
    logs = sorted(glob.glob(os.path.join(files_dir, "logs", "*")),
                  key=lambda p: (int(m.group(1)) if (m := _LOG_ITER.search(os.path.basename(p))) else 0, p))
    for path in logs:
        text = _read(path) or ""
        # mntcr's log: the command, its stdout, then its stderr; the error is on stderr.
        if "\n--- stderr\n" in text:
            text = text.split("\n--- stderr\n", 1)[1]
        for line in text.splitlines():
            if _ERROR_LINE.search(line):
                return path, line.strip()
    return None


def _legend() -> str:
    return ("<p class='legend'><span><b>box</b> a mount (mount point, type source, propagation)</span>"
            "<span>colour: peer group G1, G2... (same colour in every namespace)</span>"
            "<span>dotted arrow: master &#8594; slave</span><span>dashed border: unbindable</span>"
            "<span>grey with <b style='color:#b00000'>ro</b>: read-only</span>"
            "<span>red edge: overmount</span><span>&#9679; open file / cwd / root</span>"
            f"<span style='background:{report_graph.HIGHLIGHT_FILL}'>differs after restore</span></p>")


def _trees(page: _Page, snap: dict, highlight=None, caption_suffix: str = "", inline: bool = True) -> list:
    spaces = report_graph.namespaces(snap)
    names = report_graph.group_names(spaces)
    homes = report_graph.group_homes(spaces)
    page.add("<div class='trees'>")
    for i, ns in enumerate(spaces):
        page.add("<figure>")
        page.picture(report_graph.dot_source(ns, names, (highlight or [set()] * len(spaces))[i],
                                             ns.title + caption_suffix, homes), inline)
        page.add("</figure>")
    page.add("</div>")
    return spaces


def _failure(page: _Page, row: dict, anchor: str) -> None:
    d = _files_dir(row)
    page.add(f"<section class='failure'><h3 id='{_e(anchor)}'>{_e(row.get('nodeid') or case_of(row))}</h3>",
             f"<p>kernel <b>{_e(row.get('kernel', '?'))}</b>"
             + (f" ({_e(row['kernel_release'])})" if row.get("kernel_release") else "")
             + f", engine <b>{_e(row['backend'])}</b>, flavor {_e(row['flavor'])}: "
             f"<b>{_e(row['outcome'].upper())}</b> {_e(_short(row.get('reason', ''), 300))}</p>")
    if d is None:
        page.add("<p class='note'>no files were kept for this failure (run with --report DIR).</p>")
    else:
        err = first_error_line(d)
        if err:
            page.add(f"<p>first engine error ({page.link(err[0])}): <code>{_e(err[1])}</code></p>")
        kept = [os.path.join(d, n) for n in sorted(os.listdir(d))]
        page.add("<p>kept files: " + " · ".join(
            page.link(p, os.path.basename(p) + ("/" if os.path.isdir(p) else "")) for p in kept) + "</p>")
        logs = sorted(glob.glob(os.path.join(d, "logs", "*")))
        if logs:
            page.add("<p>logs: " + " · ".join(page.link(p) for p in logs) + "</p>")
    if row.get("message"):
        page.add("<details open><summary>runner's report</summary><pre>"
                 + _e(row["message"]) + "</pre></details>")
    if d is None:
        page.add("</section>")
        return
    setup_log = _read(os.path.join(d, "setup.log"))
    if row["outcome"] == "error" and setup_log:
        page.add("<h4>setup output</h4><pre>" + _e(setup_log) + "</pre>")
    before = _json(os.path.join(d, "before.json"))
    afters = sorted(glob.glob(os.path.join(d, "after.*.json")),
                    key=lambda p: int(m.group(1)) if (m := _ITER.search(os.path.basename(p))) else 0)
    after = _json(afters[-1]) if afters else None
    if before and after:
        try:
            b_spaces = report_graph.namespaces(before)
            a_spaces = report_graph.namespaces(after)
        except ValueError as e:
            page.add(f"<p class='note'>snapshots unreadable: {_e(e)}</p></section>")
            return
        hl = report_graph.differing_labels(b_spaces, a_spaces)
        names = report_graph.group_names(b_spaces)
        a_names = report_graph.group_names(a_spaces)
        page.add(f"<h4>mount trees before dump / after restore ({sum(map(len, hl))} differing mount(s) "
                 "highlighted)</h4>", _legend())
        for i in range(max(len(b_spaces), len(a_spaces))):
            page.add("<div class='pair'>")
            for spaces, nm, what in ((b_spaces, names, "before dump"),
                                     (a_spaces, a_names, f"after restore ({os.path.basename(afters[-1])})")):
                page.add("<div>")
                if i < len(spaces):
                    page.picture(report_graph.dot_source(spaces[i], nm, hl[i], f"{spaces[i].title}, {what}",
                                                         report_graph.group_homes(spaces)))
                else:
                    page.add(f"<p class='note'>no mount namespace {i + 1} {_e(what)}</p>")
                page.add("</div>")
            page.add("</div>")
        bt = _read(os.path.join(d, "before.txt")) or ""
        at = _read(afters[-1][:-5] + ".txt") or ""
        diff = "\n".join(difflib.unified_diff(bt.splitlines(), at.splitlines(), "before dump",
                                              os.path.basename(afters[-1])[:-5], lineterm=""))
        page.add("<h4>compared state, unified diff</h4><pre>" + _e(diff or "(no difference in the compared text)")
                 + "</pre>")
    page.add("</section>")


def _timings(page: _Page, rows, columns, case_ids) -> None:
    page.add("<h2 id='timings'>Timings</h2>",
             "<p class='note'>seconds per phase, summed over the iterations of each test "
             "(setup: the container and the scenario's setup; compare: snapshots and check scripts).</p>",
             "<table><tr><th>kernel</th><th>engine</th><th>tests</th>"
             + "".join(f"<th>{p} s<br><span class='reason'>total / median / max</span></th>" for p in PHASES)
             + "</tr>")
    for col in columns:
        mine = [r.get("timings") or {} for r in rows if column_of(r) == col]
        cells = []
        for p in PHASES:
            vals = [t[p] for t in mine if p in t]
            cells.append(f"{sum(vals):.2f} / {statistics.median(vals):.2f} / {max(vals):.2f}" if vals else "-")
        page.add(f"<tr><td>{_e(col[0])}</td><td>{_e(_column_label(col, True))}</td>"
                 f"<td class='num'>{len(mine)}</td>" + "".join(f"<td class='num'>{c}</td>" for c in cells)
                 + "</tr>")
    page.add("</table>")
    for p in ("restore", "dump"):
        timed = sorted((r for r in rows if (r.get("timings") or {}).get(p) is not None),
                       key=lambda r: -r["timings"][p])[:SLOWEST]
        if not timed:
            continue
        top = timed[0]["timings"][p] or 1.0
        page.add(f"<h3>slowest {p}s</h3><table><tr><th>scenario</th><th>kernel</th><th>engine</th>"
                 f"<th>{p} s</th><th></th></tr>")
        for r in timed:
            v = r["timings"][p]
            page.add(f"<tr><td><a href='#{_e(case_ids[case_of(r)])}'>{_e(case_of(r))}</a></td>"
                     f"<td>{_e(r.get('kernel', '?'))}</td><td>{_e(r['backend'])}</td><td class='num'>{v:.2f}</td>"
                     f"<td><span class='bar' style='width:{max(1, int(200 * v / top))}px'></span></td></tr>")
        page.add("</table>")


def _scenario(page: _Page, case: str, by_col: dict, columns, case_id: str, open_: bool) -> None:
    rows = [by_col[c] for c in columns if c in by_col]
    first = rows[0]
    badges = "".join(f"<span class='badge {_e(r['outcome'])}'>{_e(column_of(r)[0])} {_e(r['backend'])}: "
                     f"{_e(r['outcome'])}</span>" for r in rows)
    page.add(f"<details class='case' id='{_e(case_id)}'{' open' if open_ else ''}><summary><b>{_e(case)}</b>"
             f"{badges}</summary>")
    if first.get("description"):
        page.add(f"<p class='desc'>{_e(first['description'])}</p>")
    if first.get("params"):
        # the values as the scenario gave them; rows of older runs have only the id form
        pairs = list((first.get("param_values") or {}).items()) or \
            [p.split("=", 1) for p in first["params"].split("-") if "=" in p]
        page.add("<table><tr>" + "".join(f"<th>{_e(k)}</th>" for k, _ in pairs) + "</tr><tr>"
                 + "".join(f"<td>{_e(v)}</td>" for _, v in pairs) + "</tr></table>"
                 if pairs else f"<p>parameters: <code>{_e(first['params'])}</code></p>")
    snap, source = None, None
    for r in sorted(rows, key=lambda r: r["outcome"] != "pass"):  # a passing run built it as meant
        d = _files_dir(r)
        snap = _json(os.path.join(d, "before.json")) if d else None
        if snap:
            source = r
            break
    if snap:
        page.add(f"<h4>mount tree it built <span class='note'>(before dump; {_e(column_of(source)[0])}, "
                 f"{_e(source['backend'])})</span></h4>")
        try:
            _trees(page, snap, inline=open_)
        except ValueError as e:
            page.add(f"<p class='note'>snapshot unreadable: {_e(e)}</p>")
        golden = _read(os.path.join(_files_dir(source), GOLDEN_FILE))
        check = snap.get("check_output")
        if golden is not None:
            same = "matches" if check == golden else "differs from"
            name = os.path.splitext(os.path.basename(source["scenario"]))[0] + ".out"
            page.add(f"<h4>golden check output <span class='note'>({_e(name)}; the check before dump {same} it)"
                     "</span></h4><pre>" + _e(golden or "(empty)") + "</pre>")
        if check is not None and check != golden:
            page.add("<h4>check output (before dump)</h4><pre>" + _e(check or "(empty)") + "</pre>")
    else:
        page.add("<p class='note'>no snapshot kept (skipped, or a setup error).</p>")
    page.add("<table><tr><th>kernel</th><th>engine</th><th>outcome</th>"
             + "".join(f"<th>{p} s</th>" for p in PHASES) + "</tr>")
    for r in rows:
        t = r.get("timings") or {}
        page.add(f"<tr><td>{_e(column_of(r)[0])}</td><td>{_e(_column_label(column_of(r), True))}</td>"
                 f"<td class='{_e(r['outcome'])}'>{_e(r['outcome'])} <span class='reason'>"
                 f"{_e(_short(r.get('reason', ''), 120))}</span></td>"
                 + "".join(f"<td class='num'>{t[p]:.2f}</td>" if p in t else "<td>-</td>" for p in PHASES)
                 + "</tr>")
    page.add("</table></details>")


def page(rows: list[dict], out_dir: str, title: str = "zdtm report") -> str:
    """The whole page for `rows` (links relative to `out_dir`, where it will be written)."""
    rows = sorted(rows, key=lambda r: (case_of(r), column_of(r), r.get("nodeid", "")))
    columns = _columns(rows)
    cases: dict[str, dict] = {}
    for r in rows:
        cases.setdefault(case_of(r), {}).setdefault(column_of(r), r)
    case_ids = {case: f"s{i}" for i, case in enumerate(cases)}
    anchors = _anchors(rows)
    failures = [r for r in rows if r["outcome"] in ("fail", "error")]
    p = _Page(out_dir)
    p.add("<!doctype html><html lang='en'><head><meta charset='utf-8'>",
          f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
          f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
          f"<h1>{_e(title)}</h1><p>{_e(counts(rows))} &#8212; {len(cases)} scenario case(s), "
          f"kernels: {_e(', '.join(sorted({c[0] for c in columns})))}; "
          f"engines: {_e(', '.join(sorted({c[1] for c in columns})))}; "
          f"flavors: {_e(', '.join(sorted({r['flavor'] for r in rows})))}</p>",
          f"<nav><a href='#matrix'>matrix</a><a href='#failures'>failures ({len(failures)})</a>"
          f"<a href='#timings'>timings</a><a href='#scenarios'>scenarios ({len(cases)})</a></nav>")
    _matrix(p, rows, cases, columns, anchors, case_ids)
    p.add(f"<h2 id='failures'>Failures ({len(failures)})</h2>")
    if not failures:
        p.add("<p>none</p>")
    for r in failures:
        _failure(p, r, anchors[id(r)])
    _timings(p, rows, columns, case_ids)
    p.add(f"<h2 id='scenarios'>Scenarios ({len(cases)})</h2>", _legend())
    open_all = len(cases) <= OPEN_ALL_UP_TO
    for case, by_col in cases.items():
        _scenario(p, case, by_col, columns, case_ids[case], open_all)
    p.add("</body></html>\n")
    return p.text()
