"""zdtm/expected.py: a vm run is checked against the kernel's row of vm/expected.toml."""

from __future__ import annotations

import pytest

from zdtm import expected
from zdtm.expected import PROJECT


def _row(scenario, params, outcome, reason="", flavor="vm:5.10", backend="mntcr"):
    return {"scenario": scenario, "params": params, "backend": backend, "flavor": flavor,
            "outcome": outcome, "reason": reason}


TABLE = {"5.10": {"propagation/shared_bind.yaml[parent=shared]": "MOVE_MOUNT_SET_GROUP"}, "6.1": {}}


def test_matching_run_has_no_problems():
    rows = {"a": _row("scenarios/propagation/shared_bind.yaml", "parent=shared", "skip",
                      "kernel feature MOVE_MOUNT_SET_GROUP (kernel >= 5.15) is missing: ..."),
            "b": _row("scenarios/basic/tmpfs.yaml", "", "pass"),
            "c": _row("scenarios/basic/tmpfs.yaml", "", "fail", flavor="vm:6.1")}   # a failure fails anyway
    assert expected.check(rows, str(PROJECT), TABLE) == []


def test_unexpected_skip_wrong_facility_and_stale_entry_are_named():
    rows = {"a": _row("scenarios/fstypes/ext4.yaml", "", "skip", "filesystem ext4 is not in /proc/filesystems",
                      flavor="vm:6.1"),
            "b": _row("scenarios/propagation/shared_bind.yaml", "parent=shared", "skip", "command x is not installed"),
            "c": _row("scenarios/propagation/shared_bind.yaml", "parent=shared", "pass", flavor="vm:5.10")}
    got = [str(p) for p in expected.check({"a": rows["a"], "b": rows["b"]}, str(PROJECT), TABLE)]
    assert got == ["kernel 5.10: propagation/shared_bind.yaml[parent=shared]: skipped (command x is not "
                   "installed), expected to skip for MOVE_MOUNT_SET_GROUP",
                   "kernel 6.1: fstypes/ext4.yaml: skipped (filesystem ext4 is not in /proc/filesystems) but "
                   "vm/expected.toml expects a pass"]
    stale = expected.check({"c": rows["c"]}, str(PROJECT), TABLE)
    assert len(stale) == 1 and "remove it there" in stale[0].text


def test_other_backends_flavors_kernels_and_foreign_scenarios_are_not_checked(tmp_path):
    rows = {"a": _row("scenarios/fstypes/ext4.yaml", "", "skip", "x", backend="criu", flavor="vm:6.1"),
            "b": _row("scenarios/fstypes/ext4.yaml", "", "skip", "x", flavor="ns"),
            "c": _row("scenarios/fstypes/ext4.yaml", "", "skip", "x", flavor="vm:6.1-rt"),
            "d": _row("scenarios/mine.yaml", "", "skip", "x", flavor="vm:6.1")}
    assert expected.check(rows, str(tmp_path), TABLE) == []


def test_a_scenario_that_runs_in_no_vm_is_not_a_kernel_result():
    from zdtm.item import FLAVOR_SKIP
    rows = {"a": _row("scenarios/basic/tmpfs.yaml", "", "skip", FLAVOR_SKIP + "ns", flavor="vm:6.1"),
            "b": _row("scenarios/basic/tmpfs.yaml", "", "skip", "scenario runs in ns", flavor="vm:5.10")}
    got = expected.check(rows, str(PROJECT), TABLE)
    assert [(p.kernel, p.scenario_id) for p in got] == [("5.10", "basic/tmpfs.yaml")]


def test_shipped_table_loads_and_names_matrix_kernels_and_real_scenarios():
    from vm import matrix
    from zdtm import scenario
    table = expected.load()
    assert {"5.10", "6.1", "6.12", "7.2"} <= set(table) <= set(matrix.load())
    ids = set()
    for path in sorted(expected.SCENARIOS.rglob("*.yaml")):
        for sc in scenario.load(str(path)).render_all():
            rel = str(path.relative_to(expected.SCENARIOS))
            ids.add(f"{rel}[{sc.param_id}]" if sc.param_id else rel)
    for kernel, listed in table.items():
        assert set(listed) <= ids, f"{kernel}: ids that are no scenario: {sorted(set(listed) - ids)[:3]}"


def test_malformed_table_is_one_clear_error(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('["6.1"]\nskip = 1\n')
    with pytest.raises(ValueError, match=r"\[6.1\] may hold only `note` and a `skips` table"):
        expected.load(p)
