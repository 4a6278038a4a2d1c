"""`mntcr report merge DIR... -o OUT`: one matrix page from the results of several runs.

CI jobs (one per kernel of the VM matrix, per engine, per flavor) each upload
their `--report DIR` (results.json plus the kept files) and/or their
`--junitxml` file. This reads every results.json and JUnit XML file under the
given directories, keeps one row per (test id, kernel, engine, flavor)
(results.json wins over JUnit XML: it has the kept files and the full
failure text) and writes OUT/report.html (zdtm.report_html: rows scenarios,
columns kernel x engine), OUT/summary.md and OUT/results.json. Links to kept
files are relative, so OUT and the run directories travel together (CI: put
the downloaded artifacts under OUT).
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET

from zdtm import report, report_html, report_record


class MergeError(Exception):
    """Nothing to merge, or an input that cannot be read; the message says which and why."""


def _first_line(text: str | None) -> str:
    return next((x.strip() for x in (text or "").splitlines() if x.strip()), "")


def rows_from_results(path: str) -> list[dict]:
    """The rows of one results.json (run_dir: its directory)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise MergeError(f"{path}: not a readable results file: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise MergeError(f"{path}: not a zdtm results file (no 'rows' list)")
    if data.get("version") != report.RESULTS_VERSION:
        raise MergeError(f"{path}: results version {data.get('version')!r}, this mntcr reads "
                         f"{report.RESULTS_VERSION}")
    run_dir = os.path.dirname(os.path.abspath(path))
    return [dict(r, run_dir=run_dir) for r in data["rows"] if isinstance(r, dict) and "scenario" in r]


def rows_from_junit(path: str) -> list[dict]:
    """Rows of the zdtm test cases in a JUnit XML file (others, without the `zdtm` property, are
    left out); kept files are unknown (run_dir None)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise MergeError(f"{path}: not readable JUnit XML: {e}") from None
    rows = []
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        if report_record.PROP not in props:
            continue
        try:
            row = json.loads(props[report_record.PROP])
        except ValueError:
            continue
        row.setdefault("kernel", props.get("kernel", "?"))
        row["nodeid"] = f"{row['scenario']}::{case.get('name')}"
        row["timings"] = report_record.timings_from(props)
        if props.get("kernel_release"):
            row["kernel_release"] = props["kernel_release"]
        outcome, reason, message = "pass", "", ""
        for child in case:
            if child.tag in ("failure", "error"):
                # pytest writes a teardown error after a failure too: the first one is the reason
                if outcome in ("pass", "skip"):
                    outcome = "fail" if child.tag == "failure" else "error"
                    message = child.text or child.get("message", "")
                    reason = _first_line(child.get("message")) or _first_line(message)
            elif child.tag == "skipped" and outcome == "pass":
                outcome = "skip"
                reason = _first_line(child.get("message")).removeprefix("Skipped: ")
        if outcome == "pass" and props.get("zdtm_crfail"):
            reason = "crfail as expected: " + _first_line(props["zdtm_crfail"])
        row.update(outcome=outcome, reason=reason, message=message[:20000], run_dir=None)
        rows.append(row)
    return rows


def _key(row: dict) -> tuple:
    return (row.get("nodeid"), row.get("kernel"), row.get("backend"), row.get("flavor"))


def collect(dirs: list[str]) -> list[dict]:
    """Every row under `dirs` (results.json and *.xml files, searched recursively), one per key."""
    by_key: dict[tuple, dict] = {}
    from_junit: dict[tuple, dict] = {}
    found = 0
    for d in dirs:
        if not os.path.exists(d):
            raise MergeError(f"{d}: no such file or directory")
        paths = [d] if os.path.isfile(d) else sorted(
            os.path.join(top, n) for top, _, names in os.walk(d) for n in names)
        for path in paths:
            name = os.path.basename(path)
            if name == report.RESULTS_FILE:
                found += 1
                for row in rows_from_results(path):
                    by_key.setdefault(_key(row), row)
            elif name.endswith(".xml"):
                rows = rows_from_junit(path)
                found += bool(rows)
                for row in rows:
                    from_junit.setdefault(_key(row), row)
    if not found:
        raise MergeError(f"no {report.RESULTS_FILE} and no JUnit XML with zdtm results under: {', '.join(dirs)}")
    for key, row in from_junit.items():
        by_key.setdefault(key, row)
    return list(by_key.values())


def markdown(rows: list[dict]) -> str:
    """The merged matrix as a markdown table (columns 'kernel engine')."""
    columns = sorted({report_html.column_of(r) for r in rows})
    cases: dict[str, dict] = {}
    for r in rows:
        cases.setdefault(report_html.case_of(r), {}).setdefault(report_html.column_of(r), r)
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    out = ["# zdtm matrix", "", report_html.counts(rows), "",
           "| scenario | " + " | ".join(esc(f"{k} {e}" + (f" ({f})" if f != "ns" else "")) for k, e, f in columns)
           + " |", "|---" * (len(columns) + 1) + "|"]
    for case, by_col in sorted(cases.items()):
        cells = [esc(report._cell(by_col[c], None)) if c in by_col else "-" for c in columns]
        out.append(f"| {esc(case)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def merge(dirs: list[str], out_dir: str, title: str = "zdtm matrix") -> str:
    """Write OUT/report.html, summary.md and results.json for the runs under `dirs`; return the HTML path."""
    rows = collect(dirs)
    os.makedirs(out_dir, exist_ok=True)
    out_dir = os.path.abspath(out_dir)
    html_path = os.path.join(out_dir, "report.html")
    text = report_html.page(rows, out_dir, title=title)
    with open(html_path, "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(markdown(rows))
    # Merged results can be merged again (rows are one per key, so runs found twice count once);
    # kept files are named relative to OUT.
    merged = [dict({k: v for k, v in r.items() if k != "run_dir"},
                   artifacts=os.path.relpath(os.path.join(r["run_dir"], r["artifacts"]), out_dir)
                   if r.get("run_dir") and r.get("artifacts") else None) for r in rows]
    with open(os.path.join(out_dir, report.RESULTS_FILE), "w") as f:
        json.dump({"version": report.RESULTS_VERSION, "rows": merged}, f, indent=1)
    return html_path


# --- command line (`mntcr report ...`, registered by engine/cli.py) ------------------

def add_parser(subparsers) -> None:
    """Register the `report` verb with its sub-verb `merge`."""
    p = subparsers.add_parser("report", help="zdtm reports: merge the results of several runs into one page",
                              description="Reports of the zdtm scenario runner (pytest scenarios/ --report DIR).")
    rsub = p.add_subparsers(dest="report_verb", metavar="SUBVERB", required=True)
    m = rsub.add_parser(
        "merge", help="one matrix page (scenarios x kernel x engine) from several runs",
        description="Read every results.json (written by --report DIR) and JUnit XML file (--junitxml) "
                    "under DIR... and write OUT/report.html: rows scenarios, columns kernel x engine, cells "
                    "pass/fail/skip with the reason; failures with their pictures and kept files (when the "
                    "results.json and its files are there); timings per phase. Also OUT/summary.md.")
    m.add_argument("dirs", nargs="+", metavar="DIR", help="directories (searched recursively) or files")
    m.add_argument("-o", "--output", required=True, metavar="OUT", help="directory for report.html and summary.md")
    m.add_argument("--title", default="zdtm matrix", help="page title (default: zdtm matrix)")
    m.set_defaults(handler=cmd_merge)


def cmd_merge(args) -> int:
    """`mntcr report merge`: exit 0 when the page was written (whatever the results), 2 on bad input."""
    try:
        path = merge(args.dirs, args.output, title=args.title)
    except MergeError as e:
        print(f"mntcr report merge: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(args.output, "summary.md")) as f:
        counts = f.read().splitlines()[2]
    print(f"{path}: {counts}")
    return 0
