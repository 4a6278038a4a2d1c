"""zdtm/item.py: the one item path. Its guest entry point (`python -m zdtm.item WORKDIR`) runs here too.

The vm flavor runs exactly this entry point inside the guest; running it on
the host kernel checks the path itself without booting a VM.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from zdtm import item, scenario

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the ns place needs root (namespaces, mounts)")


def _spec(tmp_path, text, **kw):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    sc = scenario.load(str(p)).render_all()[0]
    return item.ItemSpec(scenario=sc, backend=kw.pop("backend", "mntcr"), flavor=kw.pop("flavor", "vm"), iters=1,
                         **kw)


def _run_entry_point(spec, workdir) -> item.Outcome:
    os.makedirs(workdir, exist_ok=True)
    item.write_spec(spec, str(workdir))
    env = dict(os.environ, PYTHONPATH=PROJECT)
    r = subprocess.run([sys.executable, "-m", "zdtm.item", str(workdir)], cwd=PROJECT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = item.read_outcome(str(workdir))
    assert out is not None, r.stderr
    return out


def test_spec_survives_pickling_and_static_skips_need_no_place(tmp_path):
    spec = _spec(tmp_path, "description: d\nsetup: exec zdtm-hold\nflavors: [ns]\n", timeout_scale=5.0)
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again.scenario.setup == "exec zdtm-hold"
    assert item.static_skip(spec) == "scenario runs only in flavors: ns"


@root_only
def test_external_slavery_passes_through_the_guest_entry_point(tmp_path):
    """The guest once restored in the wrong namespace (no backend_for): 'its mount point is missing'."""
    from engine import features
    if not features.available()["MOVE_MOUNT_SET_GROUP"].present:
        pytest.skip("kernel lacks MOVE_MOUNT_SET_GROUP (restoring slaves needs it)")
    spec = _spec(tmp_path, "description: d\nsetup: exec zdtm-hold\nrequires: {features: [MOVE_MOUNT_SET_GROUP]}\n"
                           "container: {root: slave, host_dirs: slave}\n")
    out = _run_entry_point(spec, tmp_path / "work")
    assert (out.outcome, out.message) == ("pass", "")
    assert out.kernel == os.uname().release


@root_only
def test_requirement_skip_and_setup_error_come_back_as_outcomes(tmp_path):
    skip = _run_entry_point(_spec(tmp_path, "description: d\nsetup: exec zdtm-hold\n"
                                            "requires: {commands: [no-such-command-x]}\n"), tmp_path / "a")
    assert (skip.outcome, skip.message) == ("skip", "command no-such-command-x is not installed")
    bad = _run_entry_point(_spec(tmp_path, "description: d\nsetup: echo oops; exit 7\n"), tmp_path / "b")
    assert bad.outcome == "setup-error" and "status 7" in bad.message and "oops" in bad.message
    assert (tmp_path / "b" / "setup.log").read_text().startswith("setup exited with status 7")


def test_a_broken_spec_is_a_failure_outcome_not_a_crash(tmp_path):
    (tmp_path / item.SPEC_FILE).write_bytes(b"not a pickle")
    r = subprocess.run([sys.executable, "-m", "zdtm.item", str(tmp_path)], cwd=PROJECT,
                       env=dict(os.environ, PYTHONPATH=PROJECT), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    out = item.read_outcome(str(tmp_path))
    assert out.outcome == "fail" and out.message.startswith("item runner in the VM: UnpicklingError")
