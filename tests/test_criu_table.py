"""`--backend all`: the scenario x backend table in the terminal, summary.md and report.html.

Runs pytest in a subprocess (pytester) on scenario files written for the test:
the real ns flavor, the real mntcr engine, two fake backends (`rerun`
restores by running setup again, `refuse` refuses every dump), and criu
(unavailable on purpose in the shape test: `--criu` names a missing binary, so
its column must be skips with that reason; real criu in the last test).
"""

from __future__ import annotations

import html.parser
import os
import re

import pytest

import fakebackends
from zdtm import criu_env

# Read before pytester points HOME at its tmp dir: the inner run must reuse the built criu userland.
CACHE = criu_env.cache_dir()

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root (namespaces, mounts)")


# Passes with every working backend; `refuse` is expected to refuse it.
STEADY = """\
description: a tmpfs with a file
expect: {refuse: {crfail: refuses everything}}
setup: |
  mount -t tmpfs t /mnt
  echo x > /mnt/f
  exec zdtm-hold
check: cat /mnt/f
"""
# Its check output differs on every run: a failure for every backend that restores.
DIFFERS = "description: d\nsetup: exec zdtm-hold\ncheck: cat /proc/sys/kernel/random/uuid\n"
# criu cannot dump an fd on a lazily unmounted mount ("Can't lookup mount").
DETACHED = """\
description: an fd on a lazily unmounted tmpfs
setup: |
  mount -t tmpfs t /mnt
  echo x > /mnt/f
  exec 7</mnt/f
  umount -l /mnt
  exec zdtm-hold
"""


@pytest.fixture
def run(pytester, monkeypatch):
    return fakebackends.scenario_runner(pytester, monkeypatch, fakebackends.RERUN_REFUSE, timeout=600,
                                        env={"MNTCR_CACHE": CACHE})


def terminal_grid(out: str) -> list[list[str]]:
    """The zdtm summary table of pytest's output as rows of cells (columns cut at the dash line)."""
    lines = out[out.index("zdtm summary"):].splitlines()[1:]
    dashes = lines[1]
    spans = [m.span() for m in re.finditer(r"-+", dashes)]
    rows = []
    for line in [lines[0]] + lines[2:]:
        if not line.startswith("scenario"):
            break
        rows.append([line[a:(spans[i + 1][0] if i + 1 < len(spans) else None)].strip()
                     for i, (a, _) in enumerate(spans)])
    return rows


def markdown_grid(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| "):
            cells = re.split(r"(?<!\\) \| ", line[2:-2])
            rows.append([c.replace("\\|", "|") for c in cells])
    return rows


class _Tables(html.parser.HTMLParser):
    """The first <table> of an HTML page as rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.rows, self.depth, self.done, self.cell = [], 0, False, None

    def handle_starttag(self, tag, attrs):
        if self.done:
            return
        if tag == "table":
            self.depth += 1
        elif tag == "tr" and self.depth:
            self.rows.append([])
        elif tag in ("td", "th") and self.depth:
            self.cell = ""

    def handle_endtag(self, tag):
        if self.done:
            return
        if tag == "table":
            self.depth -= 1
            self.done = self.depth == 0
        elif tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def html_grid(text: str) -> list[list[str]]:
    """The report's matrix: a kernel header row over the engine columns, merged into one header
    row ("scenario", engines...), then the cells."""
    p = _Tables()
    p.feed(text)
    kernels, engines, *rows = p.rows
    return [["scenario"] + engines] + rows


def junit_outcomes(xml: str) -> dict[str, str]:
    """testcase name -> pass / fail / skip from a junit XML file."""
    import xml.etree.ElementTree as ET
    out = {}
    for case in ET.fromstring(xml).iter("testcase"):
        tags = {child.tag for child in case}
        out[case.get("name")] = "fail" if tags & {"failure", "error"} else "skip" if "skipped" in tags else "pass"
    return out


def outcome(cell: str) -> str:
    return cell.split(":", 1)[0]


def test_backend_all_table_shape(run, pytester):
    """One row per scenario, one column per registered backend; pass / FAIL: first line / skip: reason,
    the same in the terminal, summary.md and report.html."""
    report, junit = pytester.path / "rep", pytester.path / "junit.xml"
    result = run({"steady.yaml": STEADY, "differs.yaml": DIFFERS}, "--backend", "all",
                 "--criu", "/nonexistent/criu", f"--report={report}", f"--junitxml={junit}")
    out = result.stdout.str()
    term = terminal_grid(out)
    assert term[0] == ["scenario", "criu/ns", "mntcr/ns", "refuse/ns", "rerun/ns"], term
    assert [r[0] for r in term[1:]] == ["scenarios/differs.yaml", "scenarios/steady.yaml"]
    differs, steady = dict(zip(term[0], term[1])), dict(zip(term[0], term[2]))
    # criu cannot run: a skip with the reason, in every row
    for row in (differs, steady):
        assert row["criu/ns"].startswith("skip: backend criu unavailable: --criu /nonexistent/criu"), row
    assert steady["rerun/ns"] == "pass"
    assert steady["refuse/ns"].startswith("pass: crfail as expected: dump failed (iteration 1/1): refuse: this")
    assert "second line" not in out.split("zdtm summary")[1].split("short test summary")[0]
    assert differs["rerun/ns"].startswith("FAIL: rerun: restored state differs")
    assert differs["refuse/ns"] == "FAIL: refuse dump failed (iteration 1/1): refuse: this backend refuses every dump"
    # the real engine may pass or fail here (it is developed concurrently): differs must fail,
    # and every cell must agree with pytest's own outcome of that item
    assert differs["mntcr/ns"].startswith("FAIL: mntcr")
    by_item = junit_outcomes(junit.read_text())
    assert len(by_item) == 8
    for row in term[1:]:
        name = os.path.basename(row[0]).removesuffix(".yaml")
        for col, cell in zip(term[0][1:], row[1:]):
            assert outcome(cell).lower() == by_item[f"{name}[{col.replace('/', '-')}]"], (row[0], col, cell)

    md = markdown_grid((report / "summary.md").read_text())
    assert md[0] == term[0] and [r[0] for r in md[1:]] == [r[0] for r in term[1:]]
    page = html_grid((report / "report.html").read_text())
    # the page's columns are kernel x engine (one kernel, one flavor here)
    assert page[0] == [c.removesuffix("/ns") for c in term[0]]
    assert [r[0] for r in page[1:]] == [r[0] for r in term[1:]]
    for t_row, m_row, h_row in zip(term[1:], md[1:], page[1:]):
        assert [outcome(c) for c in t_row[1:]] == [outcome(c) for c in m_row[1:]] == [outcome(c) for c in h_row[1:]]
        for t, m in zip(t_row[1:], m_row[1:]):  # the terminal may shorten a cell, never change it
            assert m.startswith(t.removesuffix("..."))
    # failed cases keep their files and the HTML links to their section
    assert (report / "scenarios_differs.yaml_differs_mntcr-ns" / "before.json").is_file()
    assert "href='#scenarios/differs.yaml::differs[mntcr-ns]'" in (report / "report.html").read_text()


def test_criu_failure_cell_carries_criu_error_and_kept_log(run, pytester):
    """A real criu refusal: the cell is criu's own error line, the message names criu's log in
    the report dir, and that log holds the line."""
    from zdtm.criu_backend import CriuBackend
    ok, reason = CriuBackend(os.environ.get("MNTCR_CRIU", "auto")).available()
    if not ok:
        pytest.skip(reason)
    report = pytester.path / "rep"
    result = run({"detached.yaml": DETACHED}, "--backend", "criu", "--criu", os.environ.get("MNTCR_CRIU", "auto"),
                 f"--report={report}")
    result.assert_outcomes(failed=1)
    term = terminal_grid(result.stdout.str())
    cell = dict(zip(term[0], term[1]))["criu/ns"]
    assert re.match(r"FAIL: criu dump failed \(iteration 1/1\): Error \(criu/files-reg\.c:\d+\): Can't lookup mount",
                    cell), cell
    m = re.search(r"\[log: (\S+)\]", result.stdout.str())
    assert m, result.stdout.str()
    log = m.group(1)
    assert log.startswith(str(report)) and os.path.isfile(log)
    line = re.search(r"(Error \(criu/files-reg\.c:\d+\): Can't lookup mount[^\n]*?) \(criu exit",
                     result.stdout.str()).group(1)
    assert line in open(log).read()
