"""Differential testing against criu: random mount trees (zdtm/randomtree.py, the generator of
tests/test_hardening_random_trees.py) through mntcr AND criu, each restore compared with its
own original (zdtm/differential.py).

A tree mntcr does not restore exactly fails the test (our bug, category `mntcr`). A tree
criu refuses, restores differently, or crashes on is a finding, not a failure of this
test: it is reported as a warning and written as a scenario under $MNTCR_FINDINGS when that
is set. criu that cannot run here (no userland, a capability) skips with the reason and is
never counted as criu's failure. The long run that shrinks each new finding and counts
findings per hour is benchmarks/differential.py.

Profiles (HYPOTHESIS_PROFILE): default 6 trees (8 to 15 s each on a loaded 2-CPU machine:
CI stays under 2 minutes, derandomized with CI=true); `long` 300; `smoke` 3.
"""

from __future__ import annotations

import os
import platform
import warnings

import pytest

from zdtm import differential, randomtree, scenario
from zdtm.differential import EngineResult

CI = os.environ.get("CI") == "true"
TIMEOUT = float(os.environ.get("MNTCR_HARDEN_TIMEOUT") or 120)
_PROFILES = {"default": dict(max_examples=6, max_ops=10), "long": dict(max_examples=300, max_ops=14),
             "smoke": dict(max_examples=3, max_ops=6)}
PROFILE = _PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "default"), _PROFILES["default"])
# The read-only container root criu 4.1.1 restores writable (what benchmarks/differential.py
# shrank it to): a regression check of the differential machinery itself.
RO_ROOT = [("flag", 0, 0)]


# --- no root needed: classification, shapes, the finding as a scenario ----------------------

DIFF = """\
  different: 1 changed, 0 only in A, 0 only in B
  A = before dump
  B = after restore 1
  legend: '!' attributes differ (A -> B), '-' only in A, '+' only in B
    TARGET  SOURCE FSTYPE OPTIONS PROPAGATION
  ! /       tmpfs tmpfs ro,relatime private
  !   * options: ro,relatime -> rw,relatime
    ├─/dev  tmpfs tmpfs rw,nosuid,relatime private
    └─/mnt  base tmpfs rw,relatime private
"""


def test_classify_names_whose_failure_it_is():
    ok = EngineResult("mntcr", "pass")
    assert differential.classify(ok, EngineResult("criu", "pass")) is None
    assert differential.classify(ok, EngineResult("criu", "refuses", "dump", "Error (criu/mount.c:1): x")) \
        == "criu-refuses"
    assert differential.classify(ok, EngineResult("criu", "differs", "compare", "", DIFF)) == "criu-differs"
    assert differential.classify(ok, EngineResult("criu", "hang", "restore", "timed out")) == "criu-crash"
    assert differential.classify(ok, EngineResult("criu", "crash", "restore", "x (criu exit -11)")) == "criu-crash"
    # mntcr failing is ours, whatever criu did; an engine that could not run is the machine's
    assert differential.classify(EngineResult("mntcr", "differs"), EngineResult("criu", "pass")) == "mntcr"
    assert differential.classify(ok, EngineResult("criu", "environment")) == "environment"


@pytest.mark.parametrize("message, outcome", [
    ("Error (criu/mount.c:1234): mnt: Can't mount at ./mnt/x: Invalid argument (criu exit 1)", "refuses"),
    ("Error (criu/cr-restore.c:99): something (criu exit -11)", "crash"),
    ("criu restore: TimeoutExpired: Command '...' timed out after 120 seconds", "hang"),
    ("criu dump: no criu: the trixie userland could not be built", "environment"),
    ("Error (criu/cr-restore.c:1): prlimit: Operation not permitted (criu exit 1)", "environment"),
])
def test_criu_errors_are_told_from_environment_problems(message, outcome):
    assert differential._criu_outcome(message)[0] == outcome


def test_shape_keeps_what_differs_and_elides_paths_and_numbers():
    r = EngineResult("criu", "differs", "compare", "", DIFF)
    key = differential.shape("criu-differs", r)
    assert "root options: ro,relatime -> rw,relatime" in key
    assert "different: N" not in key  # the counts are not the shape
    # the same refusal at another line of another path collapses into one shape
    a = EngineResult("criu", "refuses", "restore", "Error (criu/mount.c:10): Can't mount /mnt/b3: Invalid argument")
    b = EngineResult("criu", "refuses", "restore", "Error (criu/mount.c:12): Can't mount /mnt/t0/b7: Invalid argument")
    assert differential.shape("criu-refuses", a) == differential.shape("criu-refuses", b)


def test_finding_is_a_loadable_scenario_with_the_diff_and_criu_version(tmp_path):
    v = differential.Verdict(RO_ROOT, EngineResult("mntcr", "pass"), EngineResult("criu", "differs", "compare", "",
                                                                                  DIFF), "criu-differs")
    v.shape = differential.shape(v.category, v.criu)
    path = differential.write_finding(v, str(tmp_path / "scenarios" / "findings"), "4.1.1", "6.18")
    assert path.startswith(str(tmp_path / "scenarios" / "findings" / "criu-differs"))
    sf = scenario.load(path)
    [inst] = sf.render_all()
    assert "mount -o remount,bind,ro /" in inst.setup
    assert inst.expectation("criu").outcome == "differs"
    assert inst.expectation("mntcr").outcome == "pass"
    assert "criu 4.1.1" in inst.description and "options: ro,relatime -> rw,relatime" in inst.description


def test_flag_ops_reach_the_root_and_mount_points():
    text = randomtree.render_setup([("tmpfs", 0, 0), ("flag", 0, 0), ("flag", 1, 3), ("flag", 2, 4)])
    assert "mount -o remount,bind,ro /" in text
    assert "mount -o remount,bind,noexec /mnt " in text
    assert "mount -o remount,bind,ro,nosuid,nodev,noexec /mnt/t0" in text


# --- the differential run itself (root, criu) ----------------------------------------------

def _criu_or_skip():
    if os.geteuid() != 0:
        pytest.skip("differential runs need root (namespaces and mounts in throwaway containers)")
    from zdtm import backends
    crit = backends.create("criu")
    why = crit.unavailable()
    if why:
        pytest.skip(f"environment, not a criu finding: criu cannot run here: {why}")
    return crit


def _run(ops):
    from zdtm import backends
    crit = _criu_or_skip()
    try:
        v = differential.run_both(ops, TIMEOUT, crit, backends.MntcrBackend(timeout=TIMEOUT))
    except differential.SetupRejected as e:
        pytest.skip(f"the tree's setup failed (not a C/R case): {e}")
    if v.category == "environment":
        pytest.skip(f"environment, not a criu finding: {v.criu.summary()} / {v.mntcr.summary()}")
    return v, crit


def _report(v: differential.Verdict, crit) -> None:
    assert v.category != "mntcr", (f"mntcr does not restore this tree (our bug): {v.mntcr.summary()}\n"
                                   f"ops={v.ops!r}\n{v.mntcr.diff}")
    if v.category:
        where = ""
        if os.environ.get("MNTCR_FINDINGS"):
            where = " -> " + differential.write_finding(v, os.environ["MNTCR_FINDINGS"],
                                                        crit.impl().env().version(), platform.release())
        warnings.warn(f"differential finding {v.category}: {v.criu.summary()[:200]} ops={v.ops!r}{where}")


def test_differential_finds_the_read_only_root_criu_restores_writable():
    v, crit = _run(RO_ROOT)
    version = crit.impl().env().version()
    assert v.mntcr.outcome == "pass", v.mntcr.summary()
    if version != "4.1.1":
        pytest.skip(f"the read-only root finding is pinned for criu 4.1.1; this is criu {version}")
    assert v.category == "criu-differs", (v.criu.summary(), v.criu.diff)
    assert "root options: ro" in v.shape and "-> rw" in v.shape


def test_differential_a_plain_tree_is_no_finding():
    """criu restores a plain tmpfs tree as it was: its new time namespace, which carries the clocks
    at dump by design (snapshot.clocks_carried), is no difference (it made every tree criu-differs)."""
    v, _ = _run([("tmpfs", 0, 0)])
    assert v.category is None, (v.criu.summary(), v.criu.diff)


hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is needed for the random tree tests")
from hypothesis import HealthCheck, given, settings  # noqa: E402


@settings(max_examples=PROFILE["max_examples"], deadline=None, derandomize=CI, database=None,
          suppress_health_check=list(HealthCheck))
@given(ops=randomtree.ops_strategy(randomtree.kinds(), PROFILE["max_ops"]))
def test_differential_random_trees(ops):
    v, crit = _run([tuple(o) for o in ops])
    _report(v, crit)


# --- the long run's search: shrinking and duplicates (fake engines, no root) -----------------

def _fake_run(monkeypatch, tmp_path):
    """benchmarks/differential.py's Run with fake engines: criu refuses every tree with a lazy unmount."""
    import importlib.util
    import sys as _sys
    import types
    spec = importlib.util.spec_from_file_location(
        "bench_differential", os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "differential.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _sys.modules.setdefault("bench_differential", bench)

    fake_criu = types.SimpleNamespace(name="criu", impl=lambda: types.SimpleNamespace(
        env=lambda: types.SimpleNamespace(version=lambda: "9.9")))
    monkeypatch.setattr(bench.backends, "create", lambda *a, **k: fake_criu)
    def fake_run_both(ops, *args, **kwargs):
        # criu "refuses" every tree with a lazy unmount: the smallest such tree is one op
        ok = EngineResult("mntcr", "pass")
        if any(kind == "lazy" for kind, _, _ in ops):
            r = EngineResult("criu", "refuses", "dump", f"Error (criu/files-reg.c:1790): Can't lookup mount={len(ops)} "
                                                          f"for fd=3 path=/l{len(ops)} (criu exit 1)")
            v = differential.Verdict(list(ops), ok, r, "criu-refuses")
            v.shape = differential.shape(v.category, r)
            return v
        return differential.Verdict(list(ops), ok, EngineResult("criu", "pass"))
    monkeypatch.setattr(bench.differential, "run_both", fake_run_both)
    findings = tmp_path / "scenarios" / "findings"
    args = types.SimpleNamespace(minutes=2, shrink_minutes=2, findings=str(findings), criu="auto", timeout=10,
                                 log=None, max_ops=14, examples=200, seed=1)
    run = bench.Run(args)
    run.say = lambda text: None
    return bench, run


def test_long_run_shrinks_each_new_shape_once_and_writes_it(tmp_path, monkeypatch):
    bench, run = _fake_run(monkeypatch, tmp_path)
    findings = tmp_path / "scenarios" / "findings"
    for k in range(3):
        run.round(k + 1)
    written = list(findings.glob("*/*.yaml"))
    assert len(written) == 1, written  # one shape: duplicates collapse
    text = written[0].read_text()
    assert "ops: [('lazy', 0, 0)]" in text  # shrunk to the one op that matters, smallest indices
    assert written[0].parent.name == "criu-refuses"


def test_long_run_deletion_pass_drops_ops_that_do_not_matter(monkeypatch, tmp_path):
    bench, run = _fake_run(monkeypatch, tmp_path)
    ops = [("tmpfs", 0, 0), ("bind", 1, 0), ("lazy", 0, 0), ("file", 2, 1)]
    v = bench.differential.run_both(ops)
    assert run.delete_pass(v).ops == [("lazy", 0, 0)]
