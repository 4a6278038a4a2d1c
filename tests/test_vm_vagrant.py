"""Vagrant smoke: up (box built offline on first use), run commands, exit status passthrough, destroy.

Marked `vagrant` (deselect with -m 'not vagrant'). The first run builds the box
(debootstrap, minutes) and caches it under $MNTCR_CACHE / ~/.cache/mntcr; later
runs take one `vagrant up` (~30-60 s under TCG). libvirt's daemons are started
when not running and stopped again at the end if this module started them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from vm.errors import VMError

pytestmark = [pytest.mark.vagrant, pytest.mark.slow]
KERNEL = os.environ.get("MNTCR_TEST_KERNEL", "6.1")
PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def daemons():
    from vm import libvirt_host, vagrant
    reason = vagrant.unavailable()
    if reason:
        pytest.skip(reason)
    try:
        started = libvirt_host.ensure_running()
    except VMError as e:
        pytest.skip(f"libvirt cannot run here: {e}")
    yield
    libvirt_host.stop(started)


@pytest.fixture(scope="module")
def results():
    # under the cache, like the vm flavor's workdirs (the VM sees nothing of the host's /tmp anyway)
    from vm import cache
    d = cache.sub("test-vagrant") / uuid.uuid4().hex[:8]
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def machine(daemons, results):
    from vm import kernels, matrix
    from vm.vagrant import VagrantVM
    v = VagrantVM(kernels.ensure(matrix.lookup(KERNEL)), results)
    v.start()
    yield v
    name = f"mntcr-{v.id}-default"
    v.close()
    # destroy really removed the domain
    p = subprocess.run(["virsh", "-q", "list", "--all", "--name"], capture_output=True, text=True)
    assert name not in p.stdout.split(), f"domain {name} still defined after close()"


def test_up_runs_the_matrix_kernel(machine):
    from vm import kernels
    r = machine.run(["uname", "-r"])
    assert r.status == 0, r.stderr
    assert r.stdout.strip() == kernels.cached(KERNEL).version
    assert machine.guest_release == r.stdout.strip()


def test_exit_status_and_output_pass_through(machine):
    r = machine.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.status, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert machine.run(["true"]).status == 0
    assert machine.run("exit 255").status == 255
    assert machine.run("kill -9 $$").status == 137  # a signal gives 128+N, not ssh's 255


def test_root_cwd_env_and_project_visible(machine):
    r = machine.run("id -u; pwd; echo \"$FOO\"; head -1 pyproject.toml", cwd=PROJECT, env={"FOO": "a 'b'"})
    assert r.status == 0, r.stderr
    assert r.stdout.splitlines() == ["0", str(PROJECT), "a 'b'", (PROJECT / "pyproject.toml").read_text().splitlines()[0]]


def test_results_come_back_and_nothing_else_is_written(machine, results):
    name = f"mntcr-vagrant-probe-{uuid.uuid4().hex}"
    outside = PROJECT / name
    (results / "in.txt").write_text("from host\n")
    r = machine.run(f"cat {results}/in.txt > {results}/{name} && echo guest >> {results}/{name} && "
                    f"touch {outside} && ln -sf /etc/passwd {results}/escape-link")
    assert r.status == 0, r.stderr
    assert (results / name).read_text() == "from host\nguest\n"
    assert not outside.exists(), "a write in the VM reached the host outside the results dir"
    assert not (results / "escape-link").is_symlink(), "a link leading out of the results dir came back"


def test_command_timeout_is_a_clear_error(daemons, results):
    from vm import kernels, matrix
    from vm.vagrant import VagrantVM
    v = VagrantVM(kernels.ensure(matrix.lookup(KERNEL)), results)
    try:
        v.start()
        with pytest.raises(VMError, match="timed out after 3s"):
            v.run(["sleep", "120"], timeout=3)
        assert v.dir is None, "the VM was not destroyed after the timeout"
    finally:
        v.close()


def test_cli_run_vagrant_passes_status_through(daemons, capfd):
    from engine import cli
    rc = cli.main(["vm", "run", "--kernel", KERNEL, "--provider", "vagrant", "--",
                   "sh", "-c", "echo from-vagrant; exit 4"])
    out, err = capfd.readouterr()
    assert rc == 4, err
    assert out == "from-vagrant\n"
    assert "vagrant up" in err
