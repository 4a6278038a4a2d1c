"""The Vagrant provider's failure handling and boot-file staging, without booting anything.

A failed `vagrant up` must leave its vagrant.log and console log where the
error line says, and name the cause (a boot timeout: the last ssh attempt's
reason); the ssh handshake limit must suit a TCG guest on a loaded host.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from vm import vagrant
from vm.errors import VMError

# What vagrant up printed (VAGRANT_LOG=info) when the guest's sshd was too slow for each attempt.
BOOT_TIMEOUT_LOG = """\
==> default: Waiting for machine to boot. This may take a few minutes...
    default: SSH address: 127.0.0.1:49943
    default: Warning: Connection reset. Retrying...
 INFO ssh: SSH not ready: #<Vagrant::Errors::NetSSHException: An error occurred in the underlying SSH library ... timeout during server version negotiating>
Timed out while waiting for the machine to boot. This means that
Vagrant was unable to communicate with the guest machine within
If you look above, you should be able to see the error(s) that
Vagrant had when attempting to connect to the machine. These errors
"""


@pytest.fixture
def machine(tmp_path, monkeypatch):
    monkeypatch.setenv("MNTCR_CACHE", str(tmp_path / "cache"))
    kernel = SimpleNamespace(name="6.1", version="6.1.0-test")
    v = vagrant.VagrantVM(kernel, tmp_path / "results", accel="tcg")
    v.dir = tmp_path / "machine"
    v.dir.mkdir()
    (v.dir / "vagrant.log").write_text(BOOT_TIMEOUT_LOG)
    (v.dir / "console.log").write_text("[    3.5] systemd[1]: Failed to find module 'autofs4'\n")
    (v.dir / "Vagrantfile").write_text("# rendered\n")
    return v


def test_a_failure_keeps_the_logs_where_the_error_says(machine):
    with pytest.raises(VMError) as e:
        machine._fail(f"vagrant up failed: {machine._vagrant_tail()}")
    msg = str(e.value)
    assert "\n" not in msg
    kept = Path(msg.rsplit("logs in ", 1)[1])
    assert (kept / "vagrant.log").read_text() == BOOT_TIMEOUT_LOG
    assert "autofs4" in (kept / "console.log").read_text()
    assert machine.dir is None, "the machine directory was not removed"
    # the cause, not Vagrant's pointer to the lines "above"
    assert "no ssh login within the boot timeout (900s)" in msg
    assert "timeout during server version negotiating" in msg


def test_only_the_newest_failures_are_kept(machine, tmp_path):
    failed = tmp_path / "cache" / "vagrant" / "failed"
    for i in range(vagrant.FAILED_KEEP + 3):
        (failed / f"vm-old{i:02d}").mkdir(parents=True)
    kept = machine.keep_logs()
    left = sorted(d.name for d in failed.iterdir())
    assert kept.name in left
    assert len(left) == vagrant.FAILED_KEEP


def test_the_ssh_step_limit_suits_a_tcg_guest(machine, tmp_path):
    machine.port = 40000
    text = machine.render("mntcr/box", tmp_path / "k", tmp_path / "i")
    assert f"config.ssh.connect_timeout = {vagrant.SSH_STEP_SECONDS['tcg']}" in text
    assert vagrant.SSH_STEP_SECONDS["tcg"] >= 30
    assert f"ConnectTimeout {vagrant.SSH_STEP_SECONDS['tcg']}" in vagrant._CONTROL.format(
        dir="/x", step=vagrant.SSH_STEP_SECONDS["tcg"])


def test_staged_kernels_of_other_caches_are_left_alone(tmp_path, monkeypatch):
    """Runs with different MNTCR_CACHEs stage into one machine-wide directory: none removes a file
    another may be about to boot from; the same content is staged once; stale files go."""
    import os
    import time
    monkeypatch.setattr(vagrant, "BOOT_DIR", tmp_path / "boot")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"kernel one")
    b.write_bytes(b"kernel one")          # the same kernel in another cache (another mtime)
    os.utime(b, (1, 1))
    c.write_bytes(b"kernel two")
    first = vagrant._stage(a, "6.1-kernel")
    assert vagrant._stage(b, "6.1-kernel") == first
    other = vagrant._stage(c, "6.1-kernel")
    assert other != first and first.read_bytes() == b"kernel one" and other.read_bytes() == b"kernel two"
    old = time.time() - vagrant.STAGED_MAX_AGE - 60
    os.utime(first, (old, old))
    vagrant._stage(c, "6.1-kernel")
    assert not first.exists() and other.exists()


class _FakeVagrant:
    """python-vagrant's Vagrant with a destroy() that reports success or fails like the CLI."""

    def __init__(self, fail: bool):
        self.fail, self.destroyed = fail, 0
        self.out_cm = self.err_cm = None

    def destroy(self):
        self.destroyed += 1
        if self.fail:
            raise vagrant.subprocess.CalledProcessError(1, ["vagrant", "destroy"])


@pytest.mark.parametrize("destroy_fails", [False, True])
def test_close_removes_a_domain_vagrant_left_defined(machine, monkeypatch, destroy_fails):
    """Whether `vagrant destroy` fails or claims success, a domain libvirt still lists is removed."""
    calls = []
    monkeypatch.setattr(vagrant.vagrant_owner, "defined_domains", lambda: [f"mntcr-{machine.id}-default"])
    monkeypatch.setattr(vagrant.vagrant_owner, "remove_domain", lambda vm_id: calls.append(("virsh", vm_id)))
    machine.v, machine._created = _FakeVagrant(destroy_fails), True
    machine.close()
    assert machine.v.destroyed == 1
    assert calls == [("virsh", machine.id)]
    assert machine.dir is None
    machine.close()  # safe twice: nothing is destroyed again
    assert machine.v.destroyed == 1 and calls == [("virsh", machine.id)]


def test_close_leaves_virsh_alone_when_the_domain_is_gone(machine, monkeypatch):
    calls = []
    monkeypatch.setattr(vagrant.vagrant_owner, "defined_domains", lambda: ["mntcr-0000aaaa-default"])
    monkeypatch.setattr(vagrant.vagrant_owner, "remove_domain", lambda vm_id: calls.append(("virsh", vm_id)))
    machine.v, machine._created = _FakeVagrant(False), True
    machine.close()
    assert calls == []


def test_a_start_that_dies_after_creating_the_machine_destroys_it(machine, monkeypatch):
    """An exception that is not one of start()'s own VMErrors (an interrupt, an ssh timeout)
    still destroys the machine: a fixture whose start() raised never calls close()."""
    closed = []

    def dies():
        machine.v, machine._created = _FakeVagrant(False), True
        raise KeyboardInterrupt

    monkeypatch.setattr(machine, "_start", dies)
    monkeypatch.setattr(machine, "close", lambda: closed.append(True))
    with pytest.raises(KeyboardInterrupt):
        machine.start()
    assert closed == [True]
