"""Suite throughput: the whole ns-flavor scenario library with `-n 2` (not part of the test run).

    python benchmarks/suite.py [-n 2] [pytest args...]

Runs `python -m pytest scenarios/ -n N -p no:cacheprovider --flavor ns` in a
fresh process with a JUnit report, counts the scenario tests that ran
(passed, failed, errors and xfails; skipped ones do not count) and their wall
time, and ends with exactly:

    scenarios_run: N
    wall_s: X.X
    scenarios_per_minute: X.X

The exit status is pytest's (so a failing suite is never reported as a fast one
without saying so); pytest's "no tests ran" (5) is an error here too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def count(junit_path: str) -> tuple[int, int]:
    """(tests that ran, tests skipped) in a JUnit XML report; an xfail counts as run."""
    ran = skipped = 0
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        skip = case.find("skipped")
        if skip is not None and skip.get("type") != "pytest.xfail":
            skipped += 1
        else:
            ran += 1
    return ran, skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", default="2", help="pytest-xdist workers (default 2)")
    args, extra = p.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="mntcr-suite-") as tmp:
        junit = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "scenarios/", "-n", args.n, "-p", "no:cacheprovider", "-q",
               "--flavor", "ns", f"--junitxml={junit}", *extra]
        t = time.monotonic()
        rc = subprocess.run(cmd, cwd=_ROOT).returncode
        wall = time.monotonic() - t
        if rc == 5 or not os.path.exists(junit):
            print("suite.py: no scenario ran", file=sys.stderr)
            return rc or 1
        ran, skipped = count(junit)
    print(f"skipped (not counted): {skipped}")
    print(f"scenarios_run: {ran}")
    print(f"wall_s: {wall:.1f}")
    print(f"scenarios_per_minute: {ran / (wall / 60):.1f}")
    if rc != 0:
        print(f"suite.py: pytest exited {rc}: some scenarios failed", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
