"""The HTML report: mount-tree pictures, escaping, the merged kernel x engine matrix, size, and a real
browser (headless Chromium) loading a page with a failure.

Runs on made-up runs (tests/reportdata.py); the end-to-end path through pytest
(properties, results.json, merge of real runs) is tests/test_report_runner.py.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from tests import browser
from tests import reportdata as rd
from zdtm import report, report_graph, report_html, report_merge

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` is not installed")


def _texts(svg: str) -> str:
    """The text content of an SVG (what a reader sees)."""
    return html.unescape(re.sub(r"<[^>]+>", "", svg))


class _Text(html.parser.HTMLParser):
    """Tags and text of a page, to check that no scenario string became markup."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


# --- pictures ------------------------------------------------------------------------

def test_namespaces_files_and_groups_are_read_from_the_snapshot():
    spaces = report_graph.namespaces(rd.snapshot())
    assert [ns.procs for ns in spaces] == [[0], [1]]
    first = spaces[0]
    assert first.files["/mnt#2"] == ["P0 cwd: /mnt", "P0 fd 7: /mnt/f"]
    assert first.files["detached"][0].startswith("P0 fd 8: /gone<script>")
    assert "P0 fd 0: /dev/null" not in sum(first.files.values(), [])  # the holder's stdio is noise
    names = report_graph.group_names(spaces)
    assert names == {10: "G1", 99: "G2"}
    # an fd on a mount of the other namespace is drawn on that mount, there
    snap = rd.snapshot()
    snap["procs"][1]["text"] += "fd 9: /peer/x flags=0 pos=0 mnt=other-ns:/mnt#1\n"
    snap["procs"][0]["text"] += "fd 9: /peer/y flags=0 pos=0 mnt=other-ns:/peer\n"
    first, second = report_graph.namespaces(snap)
    assert first.files["/mnt#1"] == ["P1 fd 9: /peer/x (from namespace 2)"]
    assert second.files["/peer"] == ["P0 fd 9: /peer/y (from namespace 1)"]
    assert not [w for ns in (first, second) for w in ns.files if w.startswith("other-ns:")]
    assert report_graph.group_homes(spaces) == {10: [0, 1]}


@needs_dot
def test_tree_picture_marks_groups_slaves_overmounts_and_open_files():
    spaces = report_graph.namespaces(rd.snapshot())
    names, homes = report_graph.group_names(spaces), report_graph.group_homes(spaces)
    src = report_graph.dot_source(spaces[0], names, {"/srv"}, homes=homes)
    g1 = report_graph.group_colour("G1")
    # the peer group's member has the group's colour, its slave a dotted arrow from it
    assert re.search(r'n1 \[label=<<B>/mnt#1</B>.*shared G1.*color="' + g1, src)
    assert re.search(r'n1 -> n4 \[style=dotted, color="' + g1, src)
    # overmount: a red edge from the covered mount; what it hides is marked
    assert 'n1 -> n2 [color="#cc0000"' in src and "overmounted by" in src
    assert re.search(r"n3 \[.*hidden beneath /mnt#2", src)
    # read-only and unbindable
    assert re.search(r'n3 \[.*<B>ro</B>.*fillcolor="#e8e8e8"', src)
    assert re.search(r'n2 \[.*unbindable.*style="rounded,filled,dashed"', src)
    # files on their mounts, the detached one on its own node; highlight
    assert re.search(r"n2 \[.*P0 cwd: /mnt.*P0 fd 7: /mnt/f", src)
    assert "detached mount(s)" in src
    assert re.search(r'n4 \[.*fillcolor="' + report_graph.HIGHLIGHT_FILL, src)
    # a master in another namespace / outside the tree is named as such
    other = report_graph.dot_source(spaces[1], names, homes=homes)
    assert "G2<BR/>(outside the dumped tree)" in other
    svgs = report_graph.render([src, other])
    assert len(svgs) == 2 and all(s.startswith("<svg") and s.endswith("</svg>") for s in svgs)
    assert ' id="' not in svgs[0] and "<title>" not in svgs[0] and "<!--" not in svgs[0]
    assert "overmounted by" in _texts(svgs[0]) and "shared G1" in _texts(svgs[0])


@needs_dot
def test_scenario_strings_in_pictures_stay_text():
    spaces = report_graph.namespaces(rd.snapshot())
    svg = report_graph.render([report_graph.dot_source(spaces[0], report_graph.group_names(spaces))])[0]
    assert "<script" not in svg and "<b>" not in svg and "<i>" not in svg
    assert "/x<b>y</b>'\"&" in _texts(svg) and "<i>evil</i>" in _texts(svg)
    assert "/gone<script>console.error('escaped?')</script>&amp;" in _texts(svg)


def test_a_huge_tree_is_cut_and_says_so():
    lines = ["1 0 0:1 / / rw shared:1 - tmpfs t rw"] + [
        f"{i} 1 0:1 / /m/{i} rw shared:1 - tmpfs t rw" for i in range(2, 502)]
    snap = {"procs": [{"pid": 1, "mountinfo": "\n".join(lines) + "\n", "text": ""}], "namespaces": "mnt: {P0}"}
    ns = report_graph.namespaces(snap)[0]
    src = report_graph.dot_source(ns, report_graph.group_names([ns]))
    assert src.count("[label=<<B>") == report_graph.MAX_NODES
    assert f"{501 - report_graph.MAX_NODES} more mounts, not drawn" in src


def test_render_without_dot_shows_the_source(monkeypatch):
    monkeypatch.setattr(report_graph.shutil, "which", lambda name: None)
    out = report_graph.render(["digraph { a [label=<&lt;x&gt;>] }"])
    assert "not installed" in out[0] and "&amp;lt;x&amp;gt;" in out[0]


def test_differing_labels_per_namespace():
    before = report_graph.namespaces(rd.snapshot())
    after = report_graph.namespaces(rd.snapshot(ns1=rd.NS1.replace("/srv rw master:10", "/srv rw")))
    assert report_graph.differing_labels(before, after) == [{"/srv"}, set()]
    # /srv joins /mnt's group: /mnt kept its own line but gained a peer, so it differs too
    joined = report_graph.namespaces(rd.snapshot(ns1=rd.NS1.replace("/srv rw master:10", "/srv rw shared:10")))
    assert report_graph.differing_labels(before, joined) == [{"/srv", "/mnt#1"}, set()]


# --- the page --------------------------------------------------------------------------

def _failing_run(run_dir: str) -> list[dict]:
    ok = rd.row("scenarios/p/a.yaml", "prop=shared-opt=a_b", description="first " + rd.HOSTILE,
                param_values={"prop": "shared", "opt": "a b<i>"})
    bad = rd.row("scenarios/p/b.yaml", backend="criu", outcome="fail",
                 reason="criu restore failed " + rd.HOSTILE, message="full text\n" + rd.HOSTILE,
                 description="second")
    skip = rd.row("scenarios/p/c.yaml", outcome="skip", reason="needs MOVE_MOUNT_SET_GROUP")
    rd.keep(run_dir, ok)
    after = rd.snapshot(ns1=rd.NS1.replace("/srv rw master:10", "/srv rw"))
    rd.keep(run_dir, bad, after=after)
    return [dict(r, run_dir=run_dir) for r in (ok, bad, skip)]


@needs_dot
def test_page_sections_links_and_escaping(tmp_path):
    rows = _failing_run(str(tmp_path))
    text = report_html.page(rows, str(tmp_path))
    # self-contained: nothing is loaded, no script
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    parser = _Text()
    parser.feed(text)
    assert "script" not in parser.tags and "i" not in parser.tags and "b" in parser.tags  # <b> is ours
    body = "".join(parser.text)
    assert "first " + rd.HOSTILE in body and "criu restore failed " + rd.HOSTILE in body
    # the matrix: a kernel header over engine columns
    assert "<th colspan='2'>kernel 6.1</th>" in text and "<th>criu</th><th>mntcr</th>" in text
    # the failure: first engine error, links to the kept files, before/after with a highlight
    assert "mntcr restore: /mnt: cannot make it shared" in text
    kept = rows[1]["artifacts"]
    for name in ("before.json", "after.0.json", "logs/restore.iter0.log", "images.0"):
        assert f"href='{kept}/{name}'" in text, name
    assert "1 differing mount(s) highlighted" in text and report_graph.HIGHLIGHT_FILL in text
    assert "--- before dump" in text and "+++ after.0" in text
    assert "full text" in text
    # per scenario: description, parameters, the picture, the check output, timings
    assert "<th>prop</th><th>opt</th></tr><tr><td>shared</td><td>a b&lt;i&gt;</td>" in text
    assert text.count("<svg") == 2 + 2 + 2 + 2  # a, b: 2 namespaces; failure: 2 x before/after
    assert "check output (before dump)" in text and "hello" in text
    assert "slowest restores" in text


def test_first_engine_error_line_in_iteration_order(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "restore.iter1.log").write_text("(00.1) Error (criu/mount.c:3): later\n")
    (logs / "dump.iter0.log").write_text("(00.0) dumping, no problem\n(00.2) Warn: not an error\n")
    (logs / "restore.iter0.log").write_text(
        "(00.1) mnt: Found /mnt\n(00.3) Error (criu/mount-v2.c:9): mnt-v2: Failed to set group\n"
        "(00.4) Error (criu/cr-restore.c:1): Restoring FAILED.\n")
    path, line = report_html.first_error_line(str(tmp_path))
    assert os.path.basename(path) == "restore.iter0.log"
    assert line == "(00.3) Error (criu/mount-v2.c:9): mnt-v2: Failed to set group"
    (logs / "dump.iter0.log").write_text("$ python -m engine.cli dump\n--- stdout\n--- stderr\n"
                                         "mntcr dump: /mnt/x: fuse is not supported\n")
    assert report_html.first_error_line(str(tmp_path))[1] == "mntcr dump: /mnt/x: fuse is not supported"


def test_golden_output_is_kept_and_shown(tmp_path):
    from zdtm import report_record
    work, run = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    (work / "before.json").write_text(json.dumps(rd.snapshot(check="hello\n")))
    (work / "images.0").mkdir()
    r = rd.row("scenarios/p/g.yaml")
    report_record.keep(str(work), str(run / r["artifacts"]), failed=False, golden="hello\n")
    assert sorted(os.listdir(run / r["artifacts"])) == ["before.json", "golden.out"]
    text = report_html.page([dict(r, run_dir=str(run))], str(run))
    assert "golden check output" in text and "(g.out; the check before dump matches it)" in text
    assert "check output (before dump)" not in text  # the same text once
    report_record.keep(str(work), str(run / r["artifacts"]), failed=False, golden="bye\n")
    text = report_html.page([dict(r, run_dir=str(run))], str(run))
    assert "differs from it" in text and "check output (before dump)" in text


def test_a_slow_restore_is_flagged_in_the_matrix(tmp_path):
    rows = [rd.row(f"scenarios/t/s{i}.yaml", run_dir=None) for i in range(4)]
    rows[2]["timings"] = dict(rows[2]["timings"], restore=9.5)
    rows.append(rd.row("scenarios/t/s0.yaml", backend="criu", run_dir=None))  # its own column
    text = report_html.page(rows, str(tmp_path))
    assert text.count("<span class='slow'>slow restore 9.5 s</span>") == 1
    assert text.count("slow dump") == 0
    matrix = text.split("<h2 id='failures'>")[0]
    row = next(line for line in matrix.split("<tr>") if "s2.yaml" in line)
    assert "slow restore 9.5 s" in row


def test_a_setup_error_shows_the_setup_output(tmp_path):
    r = rd.row(outcome="error", reason="SETUP ERROR (not a C/R failure) in s.yaml: mount: <bad>")
    d = tmp_path / r["artifacts"]
    d.mkdir()
    (d / "setup.log").write_text("mount: /mnt/<x>: special device t does not exist\n")
    text = report_html.page([dict(r, run_dir=str(tmp_path))], str(tmp_path))
    failure = text.split("<h2 id='failures'>")[1].split("<h2 id='timings'>")[0]
    assert "<h4>setup output</h4><pre>mount: /mnt/&lt;x&gt;: special device t does not exist" in failure
    assert "ERROR" in failure and "href='" + r["artifacts"] + "/setup.log'" in failure


def test_page_without_kept_files_still_reports(tmp_path):
    rows = [rd.row(outcome="fail", reason="boom", run_dir=None), rd.row(backend="criu", outcome="skip")]
    text = report_html.page(rows, str(tmp_path))
    assert "no files were kept" in text and "no snapshot kept" in text and "<svg" not in text


def _many(tmp_path, count: int) -> list[dict]:
    rows = []
    for i in range(count):
        r = rd.row(f"scenarios/many/s{i}.yaml", description=f"scenario {i}")
        ns1 = rd.NS1 if i % 2 else rd.NS1.replace("/srv", f"/srv{i}")
        rd.keep(str(tmp_path), r, before=rd.snapshot(ns1=ns1))
        rows.append(dict(r, run_dir=str(tmp_path)))
    return rows


@needs_dot
def test_two_hundred_scenarios_stay_small(tmp_path):
    """200 cases with two namespaces each: one dot run, equal trees drawn once, a page of a few MB
    whose scenario sections start closed, their pictures images the browser loads when shown."""
    rows = _many(tmp_path, 200)
    calls = []
    real = report_graph.subprocess.run
    report_graph.subprocess.run = lambda *a, **k: calls.append(a) or real(*a, **k)
    try:
        text = report_html.page(rows, str(tmp_path))
    finally:
        report_graph.subprocess.run = real
    assert len(calls) == 1
    assert text.count("<img class='tree' loading='lazy' alt='mount tree' src='data:image/svg+xml;base64,") == 400
    assert "<svg" not in text
    assert len(text.encode()) < 5_000_000, len(text.encode())
    assert "<details class='case' id='s0'>" in text  # closed: only opened sections are laid out


# --- merge -----------------------------------------------------------------------------

def _junit(path, cases):
    suite = ET.Element("testsuite")
    for name, props, child in cases:
        tc = ET.SubElement(suite, "testcase", classname="scenarios.p.s.yaml", name=name)
        pe = ET.SubElement(tc, "properties")
        for k, v in props.items():
            ET.SubElement(pe, "property", name=k, value=v)
        if child is not None:
            ET.SubElement(tc, child[0], message=child[1]).text = child[2]
    ET.ElementTree(ET.Element("testsuites")).getroot().append(suite)
    ET.ElementTree(suite).write(path)


def _props(backend, kernel, **times):
    facts = {"scenario": "scenarios/p/s.yaml", "params": "", "backend": backend, "flavor": f"vm:{kernel}",
             "kernel": f"vm:{kernel}", "expect": "pass", "description": "d"}
    out = {"zdtm": json.dumps(facts), "engine": backend, "flavor": f"vm:{kernel}", "kernel": f"vm:{kernel}"}
    out.update({f"time_{k}": str(v) for k, v in times.items()})
    return out


def test_merge_junit_runs_into_kernel_by_engine_columns(tmp_path):
    for kernel in ("5.10", "6.1"):
        d = tmp_path / "runs" / kernel
        d.mkdir(parents=True)
        _junit(d / "junit.xml", [
            ("s[mntcr-vm]", _props("mntcr", kernel, restore=1.5), None),
            ("s[criu-vm]", _props("criu", kernel),
             ("skipped", "Skipped: criu needs a kernel before 6.13", "") if kernel == "6.1" else
             ("failure", "criu dump failed: Error (mount.c:1): x", "full\ntext")),
            ("unrelated", {}, None)])
    out = tmp_path / "out"
    assert report_merge.cmd_merge(type("A", (), {"dirs": [str(tmp_path / "runs")], "output": str(out),
                                                 "title": "m"})) == 0
    md = (out / "summary.md").read_text()
    assert "| scenario | vm:5.10 criu | vm:5.10 mntcr | vm:6.1 criu | vm:6.1 mntcr |" in md.replace(" (vm)", "")
    assert "| scenarios/p/s.yaml | FAIL: criu dump failed: Error (mount.c:1): x | pass | " \
           "skip: criu needs a kernel before 6.13 | pass |" in md
    text = (out / "report.html").read_text()
    assert "<th colspan='2'>kernel vm:5.10</th><th colspan='2'>kernel vm:6.1</th>" in text
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 4 and {r["timings"].get("restore") for r in rows} >= {1.5}
    # merging the merged output again counts every run once
    again = report_merge.collect([str(tmp_path)])
    assert len(again) == 4


@needs_dot
def test_merge_prefers_results_files_and_keeps_their_pictures(tmp_path):
    run = tmp_path / "run"
    rows = _failing_run(str(run))
    report.write_results(str(run), {r["nodeid"]: {k: v for k, v in r.items() if k not in ("nodeid", "run_dir")}
                                    for r in rows})
    _junit(run / "junit.xml", [])  # no zdtm cases: ignored
    out = tmp_path / "merged"
    path = report_merge.merge([str(tmp_path)], str(out))
    text = open(path).read()
    assert "href='../run/" in text and "<svg" in text and "mntcr restore: /mnt: cannot make it shared" in text


def test_merge_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text('{"version": 99, "rows": []}')
    args = type("A", (), {"dirs": [str(tmp_path)], "output": str(tmp_path / "o"), "title": "t"})
    assert report_merge.cmd_merge(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results version 99" in err
    args.dirs = [str(tmp_path / "missing")]
    assert report_merge.cmd_merge(args) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_ci_workflow_merges_every_jobs_report(tmp_path):
    """Each job uploads its --report directory (with its JUnit XML); the report job downloads them
    under zdtm-matrix/runs, merges them into zdtm-matrix and uploads that; as the workflow lays it out,
    the merged page links into runs/."""
    import yaml
    flow = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", ".github", "workflows",
                                            "kernels.yml")))
    jobs = flow["jobs"]
    for name in ("vm", "host"):
        run = " ".join(s.get("run", "") for s in jobs[name]["steps"])
        assert "--report" in run and "--junitxml" in run, name
        up = [s for s in jobs[name]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
        assert up and up[0]["if"] == "always()" and up[0]["with"]["name"].startswith("zdtm-"), name
    assert "--backend mntcr,criu" in " ".join(s.get("run", "") for s in jobs["host"]["steps"])
    report_job = jobs["report"]
    assert set(report_job["needs"]) == {"vm", "host"} and report_job["if"] == "always()"
    steps = report_job["steps"]
    down = next(s for s in steps if s.get("uses", "").startswith("actions/download-artifact"))
    merge = next(s for s in steps if "mntcr report merge" in s.get("run", ""))
    up = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert down["with"]["pattern"] == "zdtm-*" and down["with"]["path"] == "zdtm-matrix/runs"
    assert "zdtm-matrix/runs -o zdtm-matrix" in merge["run"] and up["with"]["path"] == "zdtm-matrix"
    # the same layout here: one job's report under runs/, merged into its parent
    job = tmp_path / "zdtm-matrix" / "runs" / "zdtm-host"
    rows = _failing_run(str(job))
    report.write_results(str(job), {r["nodeid"]: {k: v for k, v in r.items() if k not in ("nodeid", "run_dir")}
                                    for r in rows})
    text = open(report_merge.merge([str(tmp_path / "zdtm-matrix" / "runs")], str(tmp_path / "zdtm-matrix"))).read()
    assert f"href='runs/zdtm-host/{rows[1]['artifacts']}/after.0.json'" in text


def test_mntcr_cli_has_report_merge():
    from engine import cli
    args = cli.build_parser().parse_args(["report", "merge", "a", "b", "-o", "out"])
    assert args.dirs == ["a", "b"] and args.output == "out" and args.handler is report_merge.cmd_merge


# --- a real browser ----------------------------------------------------------------------

@needs_dot
@pytest.mark.skipif(browser.executable() is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(tmp_path):
    """The page loads without a console message (the CSP would log any script or fetch), every
    picture is an SVG with drawn nodes, and the screenshot is a real image (kept as report.png);
    on a big page, an opened scenario's picture (a lazy image) loads and has a size."""
    rows = _failing_run(str(tmp_path))
    path = tmp_path / "report.html"
    path.write_text(report_html.page(rows, str(tmp_path)))
    page = browser.load(str(path), (
        "document.querySelectorAll('svg').length",
        "document.querySelectorAll('svg g.node').length",
        "Math.min(...[...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect().width))",
        "document.querySelectorAll('script').length",
        "document.querySelector('h1').textContent"))
    assert page.console == [], page.console
    assert page.values["document.querySelectorAll('svg').length"] == 8
    assert page.values["document.querySelectorAll('svg g.node').length"] >= 8 * 3
    assert page.values["Math.min(...[...document.querySelectorAll('svg')].map(s => s.getBoundingClientRect()"
                       ".width))"] > 50
    assert page.values["document.querySelectorAll('script').length"] == 0
    assert page.values["document.querySelector('h1').textContent"] == "zdtm report"
    assert page.screenshot.startswith(b"\x89PNG\r\n\x1a\n") and len(page.screenshot) > 20000
    (tmp_path / "report.png").write_bytes(page.screenshot)
    big = tmp_path / "big"
    big.mkdir()
    (big / "report.html").write_text(report_html.page(_many(big, report_html.OPEN_ALL_UP_TO + 5), str(big)))
    shown = ("new Promise(done => { const d = document.querySelector('details.case'); d.open = true;"
             " const i = d.querySelector('img.tree'); i.scrollIntoView();"
             " const size = () => done([i.naturalWidth, i.getBoundingClientRect().height]);"
             " if (i.complete) size(); else { i.onload = size; i.onerror = () => done([-1, -1]); } })")
    page = browser.load(str(big / "report.html"), ("document.querySelectorAll('img.tree').length", shown))
    assert page.console == [], page.console
    assert page.values["document.querySelectorAll('img.tree').length"] == 2 * (report_html.OPEN_ALL_UP_TO + 5)
    width, height = page.values[shown]
    assert width > 50 and height > 50, (width, height)  # an opened section's picture loads and is drawn
    keep = os.environ.get("ZDTM_KEEP_SCREENSHOT")
    if keep:  # to look at it: ZDTM_KEEP_SCREENSHOT=/tmp/report.png pytest tests/test_report.py -k chromium
        shutil.copyfile(tmp_path / "report.png", keep)
