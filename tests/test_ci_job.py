""".ci/job fails a CI job loudly unless it really ran and passed tests, and times it.

A CI run is judged on its exit status alone: a job that collected nothing, skipped everything or
failed to load a file must not pass. Each case runs .ci/job over a stand-in command that prints
what pytest would and exits as pytest would.
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

JOB = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "job"


def _job(output: str, rc: int) -> subprocess.CompletedProcess:
    script = f"printf '%s\\n' \"$1\"; exit {rc}"
    return subprocess.run([str(JOB), "fake", "sh", "-c", script, "sh", output],
                          capture_output=True, text=True, timeout=60)


def test_a_job_that_passed_tests_passes_with_its_minutes():
    got = _job("==== 12 passed, 3 skipped in 4.56s ====", 0)
    assert got.returncode == 0, got.stderr
    assert "=== fake: took 0.0 minutes" in got.stdout
    assert "=== fake: ok in 0.0 minutes: ==== 12 passed, 3 skipped in 4.56s ====" in got.stdout


def test_a_quiet_summary_counts():
    got = _job("7 passed in 1.00s", 0)
    assert got.returncode == 0, got.stderr


@pytest.mark.parametrize("output, rc, why", [
    ("==== no tests ran in 0.01s ====", 5, "no tests ran (pytest exit 5)"),
    ("==== 1 failed, 3 passed in 2.00s ====", 1, "exit 1: ==== 1 failed, 3 passed in 2.00s ===="),
    ("ERROR collecting tests/test_x.py\n==== 3 passed in 2.00s ====", 0, "an error collecting tests"),
    ("==== 3 passed, 1 error in 2.00s ====\n1 error during collection", 0, "an error collecting"),
    ("nothing like pytest", 0, "no pytest summary line"),
    ("==== 4 skipped in 0.50s ====", 0, "no test passed (all skipped or deselected?)"),
    ("==== 9 deselected in 0.50s ====", 0, "no test passed"),
])
def test_a_job_that_did_not_pass_tests_fails_loudly(output, rc, why):
    got = _job(output, rc)
    assert got.returncode == 1
    assert "=== fake: FAILED in 0.0 minutes: " in got.stderr
    assert why in got.stderr
