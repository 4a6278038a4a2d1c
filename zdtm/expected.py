"""The kernel matrix's expected results (vm/expected.toml): what each kernel passes and what it skips, and why.

Every row of the table is a kernel of vm/kernels.toml; under it, per missing
facility (a `mntcr check` feature, a filesystem...), the scenario ids that
skip on that kernel because of it. Every other scenario of the library must
pass there. A run of the library in the vm flavor (mntcr backend) is checked
against its kernels' rows at the session's end, so a regression on one kernel
(a scenario that newly skips or fails, or a listed skip that no longer happens
and would hide the next regression) fails the session loudly.

An id is the scenario file relative to scenarios/ plus its parameter part:
`propagation/shared_bind.yaml[parent=shared-bind=rbind]` (no brackets without
params).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from zdtm.item import FLAVOR_SKIP

PROJECT = Path(__file__).resolve().parent.parent
TABLE = PROJECT / "vm" / "expected.toml"
SCENARIOS = PROJECT / "scenarios"
BACKEND = "mntcr"


@dataclass(frozen=True)
class Problem:
    """One result that does not match the table."""

    kernel: str
    scenario_id: str
    text: str

    def __str__(self) -> str:
        return f"kernel {self.kernel}: {self.scenario_id}: {self.text}"


def load(path: Path | str = TABLE) -> dict[str, dict[str, str]]:
    """{kernel: {scenario id: facility}}; ValueError naming the file and key when malformed."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{p}: {e}") from None
    out: dict[str, dict[str, str]] = {}
    for kernel, row in data.items():
        if not isinstance(row, dict) or set(row) - {"skips", "note"}:
            raise ValueError(f"{p}: [{kernel}] may hold only `note` and a `skips` table")
        skips = row.get("skips", {})
        ids: dict[str, str] = {}
        for facility, listed in skips.items():
            if not isinstance(listed, list) or not all(isinstance(i, str) for i in listed):
                raise ValueError(f"{p}: [{kernel}.skips] {facility} must be a list of scenario ids")
            for sid in listed:
                ids[sid] = facility
        out[kernel] = ids
    return out


def scenario_id(row: dict, rootpath: str) -> str | None:
    """The table id of a summary row, or None when its scenario is not one of the library's."""
    path = os.path.realpath(os.path.join(rootpath, row["scenario"]))
    if not path.startswith(str(SCENARIOS) + os.sep):
        return None
    rel = os.path.relpath(path, SCENARIOS)
    return f"{rel}[{row['params']}]" if row.get("params") else rel


def check(rows: dict[str, dict], rootpath: str, table: dict[str, dict[str, str]] | None = None) -> list[Problem]:
    """Compare the session's summary rows (zdtm.plugin's) with the table; the mismatches.

    Only rows of the mntcr backend in the vm flavor of a kernel the table has
    are checked; failures are already failures and are not repeated here.
    """
    table = load() if table is None else table
    problems = []
    for row in rows.values():
        flavor = row.get("flavor", "")
        if row.get("backend") != BACKEND or not flavor.startswith("vm:"):
            continue
        kernel = flavor.split(":", 1)[1]
        sid = scenario_id(row, rootpath)
        if sid is None or kernel not in table:
            continue
        facility = table[kernel].get(sid)
        outcome, reason = row.get("outcome"), row.get("reason", "")
        if outcome == "skip" and reason.startswith(FLAVOR_SKIP):
            continue  # the scenario does not run in VMs at all (its `flavors`): no kernel's result
        if outcome == "skip" and facility is None:
            problems.append(Problem(kernel, sid, f"skipped ({reason}) but vm/expected.toml expects a pass"))
        elif outcome == "skip" and facility not in reason:
            problems.append(Problem(kernel, sid, f"skipped ({reason}), expected to skip for {facility}"))
        elif outcome == "pass" and facility is not None:
            problems.append(Problem(kernel, sid, f"passed, but vm/expected.toml lists it as skipping for "
                                                 f"{facility}: remove it there"))
    return sorted(problems, key=lambda p: (p.kernel, p.scenario_id))
