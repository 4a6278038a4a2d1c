"""vm/vagrant_owner.py without libvirt: virsh is a fake over a set of domain names, owners are real
processes (their locks die with them, as a CI run's do under SIGKILL).

What is checked: a machine whose owner lives is never touched; one whose owner was killed is
destroyed (domain, disk volume, machine directory, record) by the next sweep; a mntcr domain with
no owner record is named with the commands that remove it and left alone; other domains are
never looked at; a record whose owner died before its domain was defined is dropped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vm import vagrant_owner

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def libvirt(tmp_path, monkeypatch):
    """Fake domains (a set of names) behind vagrant_owner's virsh; every virsh call is recorded."""
    monkeypatch.setattr(vagrant_owner, "OWNERS", tmp_path / "owners")
    monkeypatch.delenv("MNTCR_QUIET", raising=False)   # (the sweep's lines are checked)
    state = {"domains": {"other-vm", "mntcr-box-builder"}, "calls": []}

    def virsh(*args):
        state["calls"].append(args)
        if args[:1] == ("list",):
            return subprocess.CompletedProcess(args, 0, "".join(f"{d}\n" for d in sorted(state["domains"])), "")
        if args[0] == "undefine":
            state["domains"].discard(args[1])
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(vagrant_owner, "_virsh", virsh)
    return state


def _owner(tmp_path: Path, vm_id: str) -> tuple[subprocess.Popen, Path]:
    """A process that claims machine vm_id (with a machine directory) and waits to be killed."""
    machine = tmp_path / "cache" / "vagrant" / "machines" / f"vm-{vm_id}-x1"
    machine.mkdir(parents=True)
    code = ("import sys; from pathlib import Path; from vm import vagrant_owner as o; "
            "o.OWNERS = Path(sys.argv[1]); o.claim(sys.argv[2], Path(sys.argv[3])); "
            "print('ready', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, str(vagrant_owner.OWNERS), vm_id, str(machine)],
                         cwd=PROJECT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    return p, machine


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait()


def _new_id() -> str:
    return uuid.uuid4().hex[:8]


def test_a_machine_whose_owner_lives_is_left_alone(libvirt, tmp_path):
    vm_id = _new_id()
    p, machine = _owner(tmp_path, vm_id)
    libvirt["domains"].add(vagrant_owner.domain_name(vm_id))
    try:
        assert vagrant_owner.sweep() == []
        assert vagrant_owner.domain_name(vm_id) in libvirt["domains"]
        assert machine.is_dir() and (vagrant_owner.OWNERS / f"{vm_id}.lock").exists()
        assert [c for c in libvirt["calls"] if c[0] != "list"] == []
    finally:
        _kill(p)


def test_a_machine_whose_owner_was_killed_is_destroyed(libvirt, tmp_path, capsys):
    vm_id = _new_id()
    p, machine = _owner(tmp_path, vm_id)
    name = vagrant_owner.domain_name(vm_id)
    libvirt["domains"].add(name)
    _kill(p)
    assert vagrant_owner.sweep() == [name]
    assert ("destroy", name) in libvirt["calls"] and ("undefine", name, "--nvram") in libvirt["calls"]
    assert ("vol-delete", "--pool", "default", f"{name}.img") in libvirt["calls"]
    assert libvirt["domains"] == {"other-vm", "mntcr-box-builder"}
    assert not machine.exists() and not (vagrant_owner.OWNERS / f"{vm_id}.lock").exists()
    assert f"{name}: the process that made it is gone" in capsys.readouterr().err
    # nothing more to do the second time
    libvirt["calls"].clear()
    assert vagrant_owner.sweep() == [] and [c for c in libvirt["calls"] if c[0] != "list"] == []


def test_a_domain_without_an_owner_record_is_named_not_removed(libvirt, capsys):
    name = vagrant_owner.domain_name(_new_id())
    libvirt["domains"].add(name)
    assert vagrant_owner.sweep() == []
    assert name in libvirt["domains"]
    assert [c for c in libvirt["calls"] if c[0] != "list"] == []
    err = capsys.readouterr().err
    assert f"libvirt domain {name} has no owner record" in err and f"virsh undefine {name} --nvram" in err


def test_a_record_whose_owner_died_before_its_domain_is_dropped(libvirt, tmp_path):
    dead, alive = _new_id(), _new_id()
    p_dead, _ = _owner(tmp_path, dead)
    p_alive, _ = _owner(tmp_path, alive)
    try:
        _kill(p_dead)
        assert vagrant_owner.sweep() == []
        assert not (vagrant_owner.OWNERS / f"{dead}.lock").exists()
        assert (vagrant_owner.OWNERS / f"{alive}.lock").exists()
        assert [c for c in libvirt["calls"] if c[0] != "list"] == []
    finally:
        _kill(p_alive)


def test_a_machine_its_owner_could_not_destroy_is_left_to_the_next_sweep(libvirt, tmp_path):
    """release(forget=False): the owner lives on but gave the machine up; the record stays, unlocked."""
    vm_id = _new_id()
    machine = tmp_path / "machines" / f"vm-{vm_id}-y"
    machine.mkdir(parents=True)
    fd = vagrant_owner.claim(vm_id, machine)
    libvirt["domains"].add(vagrant_owner.domain_name(vm_id))
    vagrant_owner.release(vm_id, fd, forget=False)
    assert vagrant_owner.sweep() == [vagrant_owner.domain_name(vm_id)]
    assert not machine.exists()


def test_claim_refuses_a_machine_already_owned(libvirt, tmp_path):
    vm_id = _new_id()
    p, machine = _owner(tmp_path, vm_id)
    try:
        with pytest.raises(OSError):
            vagrant_owner.claim(vm_id, machine)
        assert (vagrant_owner.OWNERS / f"{vm_id}.lock").exists()
    finally:
        _kill(p)


def test_a_recorded_directory_outside_the_machines_dir_is_never_removed(libvirt, tmp_path):
    """The record names the machine directory to remove: only a `machines/vm-ID-*` one ever is."""
    vm_id = _new_id()
    precious = tmp_path / "precious"
    precious.mkdir()
    fd = vagrant_owner.claim(vm_id, precious)
    libvirt["domains"].add(vagrant_owner.domain_name(vm_id))
    vagrant_owner.release(vm_id, fd, forget=False)
    assert vagrant_owner.sweep() == [vagrant_owner.domain_name(vm_id)]
    assert precious.is_dir()


def test_a_machine_the_sweep_could_not_remove_keeps_its_record(libvirt, tmp_path, monkeypatch, capsys):
    """virsh fails to undefine an orphaned machine: its record stays (unlocked) and its directory
    too, so the next sweep tries again (a domain without a record is never removed)."""
    vm_id = _new_id()
    p, machine = _owner(tmp_path, vm_id)
    name = vagrant_owner.domain_name(vm_id)
    libvirt["domains"].add(name)
    _kill(p)
    fake = vagrant_owner._virsh

    def failing(*args):
        if args[0] == "undefine":
            libvirt["calls"].append(args)
            return subprocess.CompletedProcess(args, 1, "", "error: failed")
        return fake(*args)
    monkeypatch.setattr(vagrant_owner, "_virsh", failing)
    assert vagrant_owner.sweep() == []
    assert name in libvirt["domains"] and machine.is_dir()
    assert (vagrant_owner.OWNERS / f"{vm_id}.lock").exists()
    assert f"libvirt domain {name} is still defined" in capsys.readouterr().err
    monkeypatch.setattr(vagrant_owner, "_virsh", fake)
    assert vagrant_owner.sweep() == [name]
    assert name not in libvirt["domains"] and not machine.exists()
    assert not (vagrant_owner.OWNERS / f"{vm_id}.lock").exists()
