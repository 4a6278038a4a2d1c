"""Reports end to end through pytest (pytester, in a subprocess, real ns flavor, fake backends):
JUnit properties, results.json, kept files, the page, and `mntcr report merge` over two jobs.

`rerun` "restores" by running setup again (passes); `mutate` does the same but
makes /mnt/b private on the restored side (a tree difference: fails).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import fakebackends

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root (namespaces, mounts)")

FAKES = fakebackends.FAKES

SHARED = """\
description: a shared tmpfs <b>with</b> a bind, an fd and a cwd in it
setup: |
  mount -t tmpfs t /mnt
  mkdir /mnt/a /mnt/b
  mount --make-shared /mnt
  mount --bind /mnt/a /mnt/b
  if [ -n "${ZDTM_RESTORED:-}" ]; then mount --make-private /mnt/b; fi
  echo x > /mnt/a/f
  exec 7</mnt/a/f
  cd /mnt/b
  exec zdtm-hold
check: |
  cat /mnt/b/f
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One CI job: both fake backends with --report and --junitxml (run once for the module)."""
    base = tmp_path_factory.mktemp("job")
    (base / "scenarios").mkdir()
    (base / "scenarios" / "shared.yaml").write_text(SHARED)
    (base / "conftest.py").write_text(FAKES)
    env = dict(os.environ, PYTHONPATH=PROJECT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "scenarios",
                           "--backend", "rerun,mutate", "--report", "rep", "--junitxml", "junit.xml"],
                          cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 1, out  # mutate fails
    return base


def test_junit_carries_kernel_engine_flavor_and_phase_times(job):
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
             for c in ET.parse(job / "junit.xml").getroot().iter("testcase")}
    assert set(cases) == {"shared[rerun-ns]", "shared[mutate-ns]"}
    for name, props in cases.items():
        engine = name.split("[")[1].split("-")[0]
        assert props["engine"] == engine and props["flavor"] == "ns" and props["kernel"] == os.uname().release
        for phase in ("setup", "dump", "restore", "compare"):
            assert float(props[f"time_{phase}"]) >= 0, (name, phase)
        # (the test backends' dump does nothing: under a millisecond it reads 0.000; setup and the
        # "restore" that runs setup again take real time)
        assert float(props["time_setup"]) > 0 and float(props["time_restore"]) > 0, (name, props)
        facts = json.loads(props["zdtm"])
        assert facts["description"].startswith("a shared tmpfs <b>with</b>")


def test_results_file_and_kept_files(job):
    rep = job / "rep"
    rows = {r["backend"]: r for r in json.loads((rep / "results.json").read_text())["rows"]}
    assert rows["rerun"]["outcome"] == "pass" and rows["mutate"]["outcome"] == "fail"
    assert "restored state differs" in rows["mutate"]["message"]
    assert set(rows["rerun"]["timings"]) == {"setup", "dump", "restore", "compare"}
    # a pass keeps what draws its tree; a failure keeps everything
    assert sorted(os.listdir(rep / rows["rerun"]["artifacts"])) == ["before.json", "before.txt"]
    assert {"before.json", "after.0.json", "setup.log"} <= set(os.listdir(rep / rows["mutate"]["artifacts"]))


def test_page_of_one_job(job):
    text = (job / "rep" / "report.html").read_text()
    assert "a shared tmpfs &lt;b&gt;with&lt;/b&gt; a bind" in text
    assert "mount tree it built" in text and "<svg" in text
    # /mnt/b became private and /mnt lost its peer: both are red
    assert "mount trees before dump / after restore (2 differing mount(s) highlighted)" in text
    assert "<th>mutate</th><th>rerun</th>" in text


def test_merge_two_jobs_into_one_matrix(job, tmp_path):
    """A second job (another kernel) uploaded only its JUnit XML: the page has both kernels."""
    other = tmp_path / "other-kernel"
    other.mkdir()
    xml = (job / "junit.xml").read_text().replace(os.uname().release, "vm:5.10")
    (other / "junit.xml").write_text(xml)
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "report", "merge", str(job / "rep"), str(other),
                           "-o", str(out)], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=PROJECT), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().startswith(f"{out}/report.html: 2 fail, 2 pass")
    md = (out / "summary.md").read_text()
    release = os.uname().release
    assert f"| scenario | {release} mutate | {release} rerun | vm:5.10 mutate | vm:5.10 rerun |" in md
    text = (out / "report.html").read_text()
    assert f"<th colspan='2'>kernel {release}</th><th colspan='2'>kernel vm:5.10</th>" in text
    # the first job's kept files are linked from the merged page
    assert "href='../" in text and "before.json" in text
