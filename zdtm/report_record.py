"""What one test item records for the reports: facts, JUnit properties, timings, kept files.

The plugin calls these; the facts travel as pytest user properties (so they
reach the controller under xdist and land in JUnit XML as <property>), and
the files are kept under the report directory, where `zdtm.report` reads them.

Properties of every scenario item (other CI dashboards can use them):

    zdtm            JSON: scenario, params (the id part), param_values, backend, flavor, kernel,
                    expect, description
    engine          the backend (mntcr, criu, ...)
    flavor          ns, or vm:KERNEL
    kernel          the kernel column of the matrix: the release (uname -r) in the
                    ns flavor, the matrix row in the vm flavor
    kernel_release  uname -r where the scenario ran (vm: once the guest answered)
    time_setup, time_dump, time_restore, time_compare
                    seconds per phase, summed over the iterations
"""

from __future__ import annotations

import json
import os
import shutil

PROP = "zdtm"
PHASES = ("setup", "dump", "restore", "compare")
# What a passing item keeps: enough to draw what it built and to show its check output.
_KEPT_ON_PASS = ("before.json", "before.txt")


def kernel_column(flavor_name: str, kernel_name: str | None) -> str:
    """The matrix's kernel for an item: this machine's release (ns) or the VM's matrix row."""
    if flavor_name == "vm":
        return f"vm:{kernel_name}" if kernel_name else "vm"
    return os.uname().release


def facts(scenario, rel_path: str, backend: str, flavor_name: str, kernel_name: str | None) -> dict:
    """The JSON facts of an item (the `zdtm` property)."""
    return {"scenario": rel_path, "params": scenario.param_id,
            "param_values": {k: str(v) for k, v in scenario.params.items()}, "backend": backend,
            "flavor": f"{flavor_name}:{kernel_name}" if kernel_name else flavor_name,
            "kernel": kernel_column(flavor_name, kernel_name),
            "expect": str(scenario.expectation(backend)), "description": scenario.description.strip()}


def properties(item_facts: dict) -> list[tuple[str, str]]:
    """The item's facts as JUnit properties, the `zdtm` JSON first."""
    return [(PROP, json.dumps(item_facts)), ("engine", item_facts["backend"]),
            ("flavor", item_facts["flavor"]), ("kernel", item_facts["kernel"])]


def timing_properties(timings: dict) -> list[tuple[str, str]]:
    """``time_PHASE`` properties (seconds, 3 decimals) for the phases that ran."""
    return [(f"time_{p}", f"{timings[p]:.3f}") for p in PHASES if p in timings]


def timings_from(props: dict) -> dict[str, float]:
    """Phase -> seconds from an item's properties."""
    out = {}
    for p in PHASES:
        try:
            out[p] = float(props[f"time_{p}"])
        except (KeyError, ValueError):
            pass
    return out


GOLDEN_FILE = "golden.out"


def keep(workdir: str, dest: str, failed: bool, golden: str | None = None) -> None:
    """Keep a finished item's files under `dest`: everything when it failed (images, logs,
    snapshots), else only the snapshot before dump; plus the scenario's golden check output for
    this combination (its NAME.out section) as golden.out, when it has one."""
    shutil.rmtree(dest, ignore_errors=True)
    if failed:
        shutil.copytree(workdir, dest, symlinks=True)
    else:
        names = [n for n in _KEPT_ON_PASS if os.path.isfile(os.path.join(workdir, n))]
        if names:
            os.makedirs(dest, exist_ok=True)
            for n in names:
                shutil.copyfile(os.path.join(workdir, n), os.path.join(dest, n))
    if golden is not None:
        os.makedirs(dest, exist_ok=True)
        with open(os.path.join(dest, GOLDEN_FILE), "w") as f:
            f.write(golden)
