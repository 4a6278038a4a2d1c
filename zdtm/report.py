"""Summary table (terminal, markdown) and the files of --report DIR.

`results` maps a test id to a row: scenario (path), params, backend, flavor,
kernel (the matrix column: release or vm:ROW), expect, description, outcome
(pass / fail / error / skip), reason (first line), message (a failure's full
text), timings (phase -> seconds), kernel_release, artifacts (the directory
name under the report dir with the item's kept files: before.json for every
item; after.N.json, setup.log, logs/, images.N/ too when it failed).

--report DIR gets summary.md, results.json (the rows, for `mntcr report
merge`) and report.html (zdtm.report_html).
"""

from __future__ import annotations

import json
import os

_WIDTH = 100


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


# --- files ---------------------------------------------------------------------

RESULTS_FILE = "results.json"
RESULTS_VERSION = 1


def rows_of(results: dict, run_dir: str | None = None) -> list[dict]:
    """The result rows (each with its test id and the run directory of its kept files)."""
    return [dict(row, nodeid=nodeid, run_dir=run_dir) for nodeid, row in results.items()]


def write_results(report_dir: str, results: dict) -> str:
    """DIR/results.json: every row of this run (what `mntcr report merge` reads back)."""
    path = os.path.join(report_dir, RESULTS_FILE)
    rows = [{k: v for k, v in r.items() if k != "run_dir"} for r in rows_of(results)]
    with open(path, "w") as f:
        json.dump({"version": RESULTS_VERSION, "rows": rows}, f, indent=1)
    return path


def write(report_dir: str, results: dict) -> str:
    """Write report.html, summary.md and results.json into `report_dir`; return the HTML path."""
    from zdtm import report_html
    os.makedirs(report_dir, exist_ok=True)
    with open(os.path.join(report_dir, "summary.md"), "w") as f:
        f.write(markdown(results))
    write_results(report_dir, results)
    path = os.path.join(report_dir, "report.html")
    text = report_html.page(rows_of(results, os.path.abspath(report_dir)), report_dir)
    with open(path, "w") as f:
        f.write(text)
    return path
