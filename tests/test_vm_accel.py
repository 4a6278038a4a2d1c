"""vm/accel.py: an explicit accelerator wins; otherwise KVM is probed once and the verdict cached."""

from __future__ import annotations

import pytest

from vm import accel
from vm.errors import VMError


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("MNTCR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(accel.ENV, raising=False)
    monkeypatch.setattr(accel, "_memo", {})
    monkeypatch.setattr(accel, "_kvm_usable", lambda: None)
    calls = []

    def fake_probe(boot_image, initrd, timeout=accel.PROBE_SECONDS):
        calls.append(boot_image)
        return False, "KVM boot did not reach init within 15s"
    monkeypatch.setattr(accel, "probe", fake_probe)
    return calls


def test_argument_then_environment_force_the_accelerator(fresh, monkeypatch):
    assert accel.choose("k", "i", "kvm") == ("kvm", "--vm-accel")
    monkeypatch.setenv(accel.ENV, "tcg")
    assert accel.choose("k", "i") == ("tcg", accel.ENV)
    assert accel.choose("k", "i", "kvm")[0] == "kvm"   # the command line beats the variable
    assert fresh == []


def test_unknown_accelerator_is_one_clear_error(fresh, monkeypatch):
    monkeypatch.setenv(accel.ENV, "hvf")
    with pytest.raises(VMError, match="MNTCR_VM_ACCEL=hvf: unknown accelerator; use one of kvm, tcg"):
        accel.choose("k", "i")


def test_probe_runs_once_and_its_verdict_is_cached_across_processes(fresh, monkeypatch):
    a, why = accel.choose("k", "i")
    assert a == "tcg" and why.startswith("KVM probe: ")
    assert accel.choose("k", "i")[0] == "tcg"
    monkeypatch.setattr(accel, "_memo", {})   # as in another process: only the cache file is left
    a, why = accel.choose("k", "i")
    assert a == "tcg" and "cached" in why
    assert len(fresh) == 1


def test_unusable_dev_kvm_means_tcg_without_a_probe(fresh, monkeypatch):
    monkeypatch.setattr(accel, "_kvm_usable", lambda: "no /dev/kvm")
    assert accel.choose("k", "i") == ("tcg", "KVM unusable: no /dev/kvm")
    assert fresh == []


@pytest.mark.vm
def test_real_probe_concludes(tmp_path, monkeypatch):
    """On this machine: a real probe boot gives a verdict (KVM aborts or hangs here: tcg)."""
    from tests.test_vm_boot import KERNEL, _requirements
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from vm import initramfs, kernels, matrix
    k = kernels.ensure(matrix.lookup(KERNEL))
    if accel._kvm_usable():
        pytest.skip(f"KVM unusable here: {accel._kvm_usable()}")
    works, why = accel.probe(k.boot_image, initramfs.ensure(k))
    assert why.startswith("KVM boot reached init") if works else why
