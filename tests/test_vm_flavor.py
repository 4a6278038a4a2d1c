"""The vm flavor: scenarios run inside a VM and their results come back to the host."""

from __future__ import annotations

import os

import pytest

from tests.test_vm_boot import KERNEL, _requirements

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def flavor(tmp_path_factory):
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from zdtm.flavors.vm import VmFlavor
    root = tmp_path_factory.mktemp("vmflavor")
    f = VmFlavor(results_root=str(root))
    assert f.unavailable(_spec(None)) is None
    yield f, root
    f.close()


def _spec(scenario, **kw):
    from zdtm.item import ItemSpec
    return ItemSpec(scenario=scenario, backend="mntcr", flavor="vm", iters=1, kernel=KERNEL, provider="qemu",
                    **kw)


def _scenario(root, name: str, text: str):
    from zdtm import scenario as sc
    p = root / f"{name}.yaml"
    p.write_text(text)
    return sc.load(str(p)).render_all()[0]


def test_skip_reason_is_computed_on_the_guest_kernel(flavor):
    f, root = flavor
    s = _scenario(root, "old", "description: d\nrequires:\n  kernel: '<5.0'\n  kernel_feature: old locks\n"
                               "setup: exec zdtm-hold\n")
    res = f.run(_spec(s), str(root / "old"))
    assert res.outcome == "skip"
    assert res.kernel != os.uname().release  # it ran on the VM's kernel, not the host's
    assert f"needs kernel <5.0 (old locks), this is {res.kernel}" in res.message
    assert res.message.count(res.kernel) == 1  # the host side adds no second "(kernel ...)"


def test_setup_output_and_failure_come_back(flavor):
    f, root = flavor
    s = _scenario(root, "bad", "description: d\nsetup: |\n  echo \"in-vm $(uname -r)\"; exit 7\n")
    res = f.run(_spec(s), str(root / "bad"))
    assert res.outcome == "setup-error"
    assert "status 7" in res.message and f"in-vm {res.kernel}" in res.message
    assert (root / "bad" / "item-result.json").exists()


def test_workdir_outside_results_root_is_refused(flavor, tmp_path):
    f, root = flavor
    s = _scenario(root, "any", "description: d\nsetup: exec zdtm-hold\n")
    with pytest.raises(ValueError, match="not under the results root"):
        f.run(_spec(s), str(tmp_path / "elsewhere"))


def test_scenarios_run_from_a_virtualenv_under_tmp(tmp_path_factory):
    """The guest mounts its own /tmp: the runner's virtualenv there must still be its interpreter."""
    import subprocess
    import sys
    import tempfile
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    venv = tempfile.mkdtemp(prefix="mntcr-venv-", dir="/tmp")
    try:
        # --system-site-packages: pytest, PyYAML and Jinja2 come from the base interpreter
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True)
        project = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=project)
        r = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pytest", "-p", "no:cacheprovider",
                            "--flavor", "vm", "--kernel", KERNEL, "scenarios/basic/tmpfs.yaml"],
                           cwd=project, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert "1 passed" in r.stdout
    finally:
        import shutil
        shutil.rmtree(venv, ignore_errors=True)


def test_items_share_one_guest_item_server_and_a_dead_one_costs_a_fresh_vm(flavor):
    """zdtm/itemserver.py: started by a VM's first item, reused by the next; if it dies, the item
    fails as an infrastructure error (VMError) and the next item boots a fresh VM with a new server."""
    from vm.errors import VMError
    from zdtm.flavors import vm as vmf
    f, root = flavor
    s = _scenario(root, "srv", "description: d\nsetup: exec zdtm-hold\n")
    pidfile = f"{vmf.ITEM_SERVER_DIR}/pid"

    def server_pid() -> str:
        vm = next(iter(vmf._VMS.values()))
        r = vm.run(["sh", "-c", f"read p < {pidfile} && kill -0 $p && echo $p"], timeout=120)
        assert r.status == 0, r.stderr
        return r.stdout.strip()

    assert f.run(_spec(s), str(root / "srv1")).outcome == "pass"
    first = server_pid()
    assert f.run(_spec(s), str(root / "srv2")).outcome == "pass"
    assert server_pid() == first
    vm = next(iter(vmf._VMS.values()))
    assert vm.run(["sh", "-c", f"read p < {pidfile} && kill -9 $p"], timeout=120).status == 0
    with pytest.raises(VMError, match="the item server in the VM is not running"):
        f.run(_spec(s), str(root / "srv3"))
    assert vm not in vmf._VMS.values()
    assert f.run(_spec(s), str(root / "srv4")).outcome == "pass"
