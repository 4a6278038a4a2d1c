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
    s = _scenario(root, "old", "description: d\nrequires:\n  kernel: '<5.0'\nsetup: exec zdtm-hold\n")
    res = f.run(_spec(s), str(root / "old"))
    assert res.outcome == "skip"
    assert res.kernel != os.uname().release  # it ran on the VM's kernel, not the host's
    assert f"this is {res.kernel}" in res.message


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
