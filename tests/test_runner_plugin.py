"""The runner end to end through pytest (pytester, in a subprocess): real ns flavor, fake backends.

The fake backends stand in for an engine so the runner can be tested before
and independently of it: `rerun` "restores" by running the setup again in a
fresh container (so a correct runner sees equal states), `mutate` does the same
but lets setup know it is a restore (so states differ where the scenario
chooses), `refuse` refuses every dump.
"""

import os
import re

import pytest

import fakebackends


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the ns flavor needs root (namespaces, mounts)")


SHARED = """\
description: a shared tmpfs with a bind, an fd and a cwd in it
params:
  prop: [shared, private]
setup: |
  mount -t tmpfs t /mnt
  mkdir /mnt/a /mnt/b
  mount --make-{{ prop }} /mnt
  mount --bind /mnt/a /mnt/b
  if [ -n "${ZDTM_RESTORED:-}" ]; then mount --make-private /mnt/b; fi
  echo x > /mnt/a/f
  exec 7</mnt/a/f
  cd /mnt/b
  exec zdtm-hold
check: |
  cat /mnt/b/f
"""


@pytest.fixture
def run(pytester, monkeypatch):
    return fakebackends.scenario_runner(pytester, monkeypatch)


def summary(result) -> str:
    out = result.stdout.str()
    return out[out.index("zdtm summary"):] if "zdtm summary" in out else ""


def test_matching_states_pass_and_ids_carry_params(run):
    result = run({"p/shared.yaml": SHARED}, "--backend", "rerun", "-v")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "scenarios/p/shared.yaml::shared[prop=shared-rerun-ns] PASSED" in out
    assert "scenarios/p/shared.yaml::shared[prop=private-rerun-ns] PASSED" in out
    assert re.search(r"scenarios/p/shared.yaml\[prop=shared\]\s+pass", summary(result))


def test_k_selects_one_combination_and_iters(run):
    result = run({"p/shared.yaml": SHARED}, "--backend", "rerun", "-k", "private", "--iters", "3", "-v")
    result.assert_outcomes(passed=1, deselected=1)


def test_tree_difference_fails_with_a_tree_diff_and_report(run, pytester):
    report = pytester.path / "rep"
    result = run({"p/shared.yaml": SHARED}, "--backend", "mutate", "-k", "prop=shared" if False else "shared-",
                 "--report", str(report))
    result.assert_outcomes(failed=1, deselected=1)
    out = result.stdout.str()
    assert "mutate: restored state differs from the state before dump (iteration 1/1)" in out
    assert "mount tree differs" in out
    assert "/mnt/b" in out
    assert re.search(r"shared\.yaml\[prop=shared\]\s+FAIL: mutate: restored state differs", summary(result))
    kept = [d for d in os.listdir(report) if d.startswith("scenarios_p_shared")]
    assert len(kept) == 1
    assert {"before.json", "after.0.json", "setup.log"} <= set(os.listdir(report / kept[0]))
    html = (report / "report.html").read_text()
    assert "<svg" in html and "#ffb3b3" in html  # graphs drawn, a differing mount highlighted
    assert "| scenarios/p/shared.yaml[prop=shared] | FAIL: mutate: restored state differs" in \
        (report / "summary.md").read_text()


def test_check_output_difference_fails(run):
    scen = SHARED.replace("cat /mnt/b/f", "cat /proc/sys/kernel/random/uuid")
    result = run({"p/shared.yaml": scen}, "--backend", "rerun", "-k", "private")
    result.assert_outcomes(failed=1, deselected=1)
    assert "check output differs (before dump vs after restore 1)" in result.stdout.str()


def test_crfail_expected_and_refused_passes(run):
    scen = "description: d\nexpect: {refuse: {crfail: the fake refuses}}\nsetup: exec zdtm-hold\n"
    result = run({"c.yaml": scen}, "--backend", "refuse")
    result.assert_outcomes(passed=1)
    assert "pass: crfail as expected: dump failed (iteration 1/1): refuse: this backend" in summary(result)


def test_crfail_unexpected_success_fails(run):
    scen = "description: d\nexpect: {rerun: {crfail: should not work}}\nsetup: exec zdtm-hold\n"
    result = run({"c.yaml": scen}, "--backend", "rerun")
    result.assert_outcomes(failed=1)
    assert "unexpected success: rerun was expected to fail (should not work)" in result.stdout.str()


def test_refusal_without_crfail_fails_with_the_backend_error(run):
    result = run({"c.yaml": "description: d\nsetup: exec zdtm-hold\n"}, "--backend", "refuse")
    result.assert_outcomes(failed=1)
    assert "refuse dump failed (iteration 1/1): refuse: this backend refuses every dump" in result.stdout.str()


def test_setup_failure_is_a_setup_error(run):
    scen = "description: d\nsetup: |\n  echo about to fail\n  false\n  exec zdtm-hold\n"
    result = run({"bad.yaml": scen}, "--backend", "rerun")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "SETUP ERROR (not a C/R failure)" in out
    assert "setup exited with status 1 before `exec zdtm-hold`" in out
    assert "about to fail" in out
    assert re.search(r"bad\.yaml\s+ERROR: SETUP ERROR", summary(result))


def test_background_process_holding_setup_pipe_is_a_setup_error(run):
    scen = "description: d\nsetup: |\n  sleep 60 &\n  exec zdtm-hold\n"
    result = run({"bg.yaml": scen}, "--backend", "rerun")
    result.assert_outcomes(errors=1)
    assert "still has setup's stdout/stderr" in result.stdout.str()


def test_schema_error_is_a_collection_error(run):
    result = run({"x.yaml": "description: d\nsetup: s\nflavours: [ns]\n"})
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert re.search(r"scenario error: \S*scenarios/x.yaml:3: unknown key 'flavours'; allowed: description", out)


def test_skip_reasons_in_summary(run):
    scens = {"k.yaml": "description: d\nrequires: {kernel: '<2.6', kernel_feature: old locks}\nsetup: exec zdtm-hold\n",
             "s.yaml": "description: d\nexpect: {skip: not today}\nsetup: exec zdtm-hold\n"}
    result = run(scens, "--backend", "rerun")
    result.assert_outcomes(skipped=2)
    table = summary(result)
    assert re.search(r"k\.yaml\s+skip: needs kernel <2.6 \(old locks\)", table)
    assert re.search(r"s\.yaml\s+skip: rerun: not today", table)


def test_backend_all_xdist_and_junitxml(run, pytester):
    scen = ("description: d\nexpect: {refuse: {crfail: refuses}}\nsetup: |\n"
            "  mount -t tmpfs t /mnt\n  exec zdtm-hold\n")
    differs = "description: d\nsetup: exec zdtm-hold\ncheck: cat /proc/sys/kernel/random/uuid\n"
    junit = pytester.path / "junit.xml"
    result = run({"a.yaml": scen, "b.yaml": scen, "c.yaml": differs}, "--backend", "rerun,refuse,mutate",
                 "-n", "2", f"--junitxml={junit}")
    result.assert_outcomes(passed=6, failed=3)
    table = summary(result)
    header = table.splitlines()[1]
    assert "mutate/ns" in header and "refuse/ns" in header and "rerun/ns" in header
    assert re.search(r"scenarios/a\.yaml\s+pass\s+pass: crfail as expected", table)
    # The reason is the failure's first line, not xdist's worker header.
    assert re.search(r"scenarios/c\.yaml\s+FAIL: mutate: restored state differs.*FAIL: refuse dump failed", table)
    assert "6 pass, 3 fail" in table or "3 fail, 6 pass" in table
    xml = junit.read_text()
    assert xml.count("<testcase") == 9 and 'name="a[refuse-ns]"' in xml


# --- golden check output (zdtm/golden.py) ----------------------------------------------

def test_a_check_that_fails_before_dump_fails(run):
    scen = "description: d\nsetup: exec zdtm-hold\ncheck: cat /mnt/missing\n"
    result = run({"c.yaml": scen}, "--backend", "rerun")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "check failed before dump (exit 1)" in out
    assert "cat: /mnt/missing: No such file or directory" in out
    assert re.search(r"c\.yaml\s+FAIL: check failed before dump \(exit 1\)", summary(result))


def test_golden_output_mismatch_fails_and_update_golden_writes_it(run, pytester):
    golden = pytester.path / "scenarios" / "p" / "shared.out"
    golden.parent.mkdir(parents=True)
    golden.write_text("=== prop=shared\nx\n=== prop=private\ny\n")
    result = run({"p/shared.yaml": SHARED}, "--backend", "rerun")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "check output before dump differs from the golden output in shared.out" in out
    assert "-y" in out and "+x" in out
    assert re.search(r"shared\.yaml\[prop=private\]\s+FAIL: check output before dump differs", summary(result))
    # --update-golden writes what the checks print, sections in the matrix's order
    result = run({"p/shared.yaml": SHARED}, "--backend", "rerun", "--update-golden", "-n", "2")
    result.assert_outcomes(passed=2)
    assert golden.read_text() == "=== prop=shared\nx\n=== prop=private\nx\n"
    run({"p/shared.yaml": SHARED}, "--backend", "rerun").assert_outcomes(passed=2)


def test_a_golden_file_without_this_combination_fails(run, pytester):
    golden = pytester.path / "scenarios" / "p" / "shared.out"
    golden.parent.mkdir(parents=True)
    golden.write_text("=== prop=shared\nx\n")
    result = run({"p/shared.yaml": SHARED}, "--backend", "rerun", "-k", "private")
    result.assert_outcomes(failed=1, deselected=1)
    assert "shared.out has no golden output for combination prop=private: write it with --update-golden" \
        in result.stdout.str()


def test_golden_output_of_a_scenario_without_params_is_the_file(run, pytester):
    # the check has the setup's helpers (zdtm_spaces, zdtm_mounts...)
    scen = ("description: d\nsetup: |\n  echo hi > /tmp/f\n  exec zdtm-hold\n"
            "check: |\n  cat /tmp/f\n  echo 'a   b' | zdtm_spaces\n")
    (pytester.path / "scenarios").mkdir()
    (pytester.path / "scenarios" / "g.out").write_text("hi\na b\n")
    run({"g.yaml": scen}, "--backend", "rerun").assert_outcomes(passed=1)
    (pytester.path / "scenarios" / "g.out").write_text("ho\n")
    run({"g.yaml": scen}, "--backend", "rerun").assert_outcomes(failed=1)


def test_expect_differs_passes_on_a_difference_and_fails_on_an_equal_restore(run):
    # `differs`: a known bug of a backend (a differential finding against criu) restores a
    # different state; the day it restores the same state, the scenario says so.
    scen = SHARED + "expect:\n  default: {differs: \"a known bug\"}\n"
    result = run({"p/shared.yaml": scen}, "--backend", "mutate,rerun", "-k", "shared-", "-v")
    result.assert_outcomes(passed=1, failed=1, deselected=2)
    out = result.stdout.str()
    assert "shared[prop=shared-mutate-ns] PASSED" in out
    assert "unexpected success: rerun was expected to restore a different state (a known bug)" in out


def test_a_tree_the_runner_left_running_fails_its_item(pytester, monkeypatch):
    """A root the runner started or restored and never stopped fails the item that made it, named by
    pid (the session's scan by command line cannot tell a restored stand-in from a host process)."""
    run = fakebackends.scenario_runner(pytester, monkeypatch, fakes=fakebackends.FORGETFUL)
    result = run({"c.yaml": "description: d\nsetup: exec zdtm-hold\n"}, "--backend", "forget")
    out = result.stdout.str()
    found = re.search(r"a tree it started or restored is still running: pid (\d+) \((.*?)\); "
                      r"end it with: kill -9 (\d+)", out)
    assert found, out
    assert found[1] == found[3] and "zdtm-hold" in found[2], out
    result.assert_outcomes(failed=1)
