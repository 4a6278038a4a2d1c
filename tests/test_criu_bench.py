"""benchmarks/backends.py: which cases it times, its geometric mean, and one real run of both backends.

No timing is asserted: only that the figures exist, are positive and are
combined as documented.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys

import pytest

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    spec = importlib.util.spec_from_file_location("bench_backends", os.path.join(PROJECT, "benchmarks/backends.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_geomean():
    bench = _bench()
    assert bench.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert bench.geomean([0.5, 2.0, 1.0]) == pytest.approx(1.0)
    assert math.isnan(bench.geomean([]))


def test_cases_leave_out_what_a_backend_is_not_expected_to_pass(tmp_path):
    """A combination with expect crfail/skip for either backend is listed as left out, with why."""
    bench = _bench()
    path = tmp_path / "scenarios" / "m.yaml"
    path.parent.mkdir()
    path.write_text("description: d\nparams:\n  x: [a, b]\n"
                    "expect:\n  criu: \"{% if x == 'b' %}crfail: not in criu{% else %}pass{% endif %}\"\n"
                    "setup: exec zdtm-hold\n")
    keep, left = bench.cases([str(path)])
    assert [label.rsplit("[", 1)[1] for label, _, _ in keep] == ["x=a]"]
    assert len(left) == 1 and "criu: expect crfail (not in criu)" in left[0][2]


BASIC = """\
description: a shared tmpfs and a slave bind of it
setup: |
  mount -t tmpfs t /mnt
  mkdir /mnt/a /tmp/b
  mount --make-shared /mnt
  mount --bind /mnt/a /tmp/b
  mount --make-slave /tmp/b
  exec zdtm-hold
check: findmnt -n -o TARGET,PROPAGATION /tmp/b
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts, criu)")
def test_run_prints_both_backends_and_the_geomean_line(tmp_path):
    """One scenario, both backends: a row with four positive wall times, their CPU times, and ratios
    that are their quotients; the geomean lines equal to that single case's ratios."""
    from zdtm.criu_backend import CriuBackend
    spec = os.environ.get("MNTCR_CRIU", "auto")
    ok, reason = CriuBackend(spec).available()
    if not ok:
        pytest.skip(reason)
    path = tmp_path / "scenarios" / "basic.yaml"
    path.parent.mkdir()
    path.write_text(BASIC)
    proc = subprocess.run([sys.executable, os.path.join(PROJECT, "benchmarks/backends.py"), str(path),
                           "--criu", spec, "--repeat", "1"], capture_output=True, text=True, timeout=300)
    out = proc.stdout
    if "not timed:" in out:
        pytest.skip("a backend failed on the scenario: " + out.split("not timed:", 1)[1].splitlines()[0].strip())
    assert proc.returncode == 0, proc.stderr + out
    row = next(line for line in out.splitlines() if "basic.yaml" in line and "left out" not in line)
    nums = [float(v) for v in re.findall(r"\d+\.\d+", row.split("basic.yaml", 1)[1])]
    (m_dump, c_dump, own_dump, r_dump, m_dcpu, c_dcpu, r_dcpu,
     m_rest, c_rest, own_rest, r_rest, m_rcpu, c_rcpu, r_rcpu) = nums
    assert min(m_dump, c_dump, m_rest, c_rest, own_dump, own_rest, m_dcpu, m_rcpu, c_dcpu, c_rcpu) > 0
    assert own_rest <= c_rest and own_dump <= c_dump  # criu's own time is inside the wall time
    assert r_dump == pytest.approx(c_dump / m_dump, abs=0.02, rel=0.02)
    assert r_rest == pytest.approx(c_rest / m_rest, abs=0.02, rel=0.02)
    assert r_dcpu == pytest.approx(c_dcpu / m_dcpu, abs=0.05, rel=0.02)   # CPU shown to 1 ms
    assert r_rcpu == pytest.approx(c_rcpu / m_rcpu, abs=0.05, rel=0.02)
    geo = dict(re.findall(r"^(criu/mntcr [a-z ]+ geomean): (\d+\.\d\d)$", out, re.M))
    assert float(geo["criu/mntcr restore geomean"]) == pytest.approx(r_rest, abs=0.011)
    assert float(geo["criu/mntcr restore cpu geomean"]) == pytest.approx(r_rcpu, abs=0.011)
    assert float(geo["criu/mntcr dump cpu geomean"]) == pytest.approx(r_dcpu, abs=0.011)
    assert "wall" in out and "criu-own" in out  # says what is measured
