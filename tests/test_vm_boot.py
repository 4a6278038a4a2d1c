"""vm/ fast path: boots throwaway VMs (kernel 6.1, downloaded once into the cache) with qemu.

Marked `vm`; deselect with -m 'not vm'. The kernel download happens on first
use (tens of seconds) and is reused from $MNTCR_CACHE / ~/.cache/mntcr after.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from vm.errors import VMError

pytestmark = pytest.mark.vm
KERNEL = os.environ.get("MNTCR_TEST_KERNEL", "6.1")
PROJECT = Path(__file__).resolve().parent.parent


def _requirements() -> str | None:
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    if not Path("/bin/busybox").exists():
        return "busybox-static is not installed (/bin/busybox)"
    if os.geteuid() != 0:
        return "needs root (dpkg -x of kernel packages keeps root-owned modes; qemu 9p passthrough)"
    return None


@pytest.fixture(scope="module")
def kernel():
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from vm import kernels, matrix
    return kernels.ensure(matrix.lookup(KERNEL))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("vmresults")


@pytest.fixture(scope="module")
def vm(kernel, results):
    from vm.qemu import QemuVM
    v = QemuVM(kernel, results)
    v.start()
    yield v
    v.close()


def test_exit_status_and_output_pass_through(vm, kernel):
    r = vm.run(["sh", "-c", "uname -r; echo oops >&2; exit 3"])
    assert r.status == 3
    assert r.stdout == kernel.version + "\n"
    assert r.stderr == "oops\n"
    assert vm.run(["true"]).status == 0
    assert vm.run("kill -9 $$").status == 137


def test_project_visible_and_cwd_env(vm):
    r = vm.run(["sh", "-c", "pwd; cat pyproject.toml | head -3; echo $FOO"], cwd=PROJECT, env={"FOO": "a b"})
    assert r.status == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(PROJECT)
    assert lines[1:4] == (PROJECT / "pyproject.toml").read_text().splitlines()[:3]
    assert lines[-1] == "a b"


def test_guest_clock_keeps_real_time(vm):
    """Without a calibrated TSC the guest runs on refined-jiffies, which under TCG on a loaded host
    lost half the seconds: the guest's timeouts and phase timings were wrong by that much."""
    r = vm.run("cat /sys/devices/system/clocksource/clocksource0/current_clocksource")
    assert r.status == 0 and r.stdout.strip() in ("tsc", "hpet"), r.stdout + r.stderr
    t = time.monotonic()
    # (a 15 s span: the job's transport, slower on a loaded host, stays a small part of it)
    r = vm.run("a=$(cut -d' ' -f1 /proc/uptime); sleep 15; i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; "
               "b=$(cut -d' ' -f1 /proc/uptime); echo $a $b")
    host = time.monotonic() - t
    a, b = map(float, r.stdout.split())
    # the host's span also holds the job's transport: the guest's may be shorter, never much
    assert 0.7 * host - 1.0 <= b - a <= host + 0.5, (b - a, host)


def test_vm_writes_reach_only_the_results_dir(vm, results):
    name = f"mntcr-vm-probe-{uuid.uuid4().hex}"
    outside = PROJECT / name
    r = vm.run(["sh", "-c", f"echo x > {outside} && echo y > {results}/{name} && id -u"])
    assert r.status == 0, r.stderr
    assert r.stdout.strip() == "0"  # root in the guest
    assert (results / name).read_text() == "y\n"
    assert not outside.exists(), "a write in the VM reached the host outside the results dir"


def test_command_timeout_is_a_clear_error(kernel, results):
    from vm.qemu import QemuVM
    with QemuVM(kernel, results) as v:
        t0 = time.monotonic()
        with pytest.raises(VMError, match="timed out after 2s"):
            v.run(["sleep", "60"], timeout=2)
        assert time.monotonic() - t0 < 20


def test_kernel_panic_is_reported_not_a_hang(kernel, results):
    from vm.qemu import QemuVM
    # no such init and no root device: the kernel panics; panic=-1 ends qemu at once
    v = QemuVM(kernel, results, init="/no/such/init", boot_timeout=60)
    t0 = time.monotonic()
    with pytest.raises(VMError, match="Kernel panic"):
        try:
            v.start()
        finally:
            v.close()
    assert time.monotonic() - t0 < 60


def test_boot_timeout_is_a_clear_error(kernel, results):
    from vm.qemu import QemuVM
    v = QemuVM(kernel, results, boot_timeout=0.5)
    with pytest.raises(VMError, match="within the boot timeout|control socket within"):
        try:
            v.start()
        finally:
            v.close()
    assert v.proc.poll() is not None, "qemu was left running after the boot timeout"


def test_cli_run_passes_status_through(kernel, capfd):
    from engine import cli
    rc = cli.main(["vm", "run", "--kernel", KERNEL, "--", "sh", "-c", "echo from-vm; exit 3"])
    out, err = capfd.readouterr()
    assert rc == 3
    assert out == "from-vm\n"
    assert "booting kernel" in err


def test_cli_run_unknown_kernel_is_one_line_exit_2(capfd):
    from engine import cli
    rc = cli.main(["vm", "run", "--kernel", "nope", "--", "true"])
    _, err = capfd.readouterr()
    assert rc == 2
    assert err.strip().count("\n") == 0 and "unknown kernel 'nope'" in err


def test_modules_and_cache_reach_the_guest_from_a_cache_under_tmp(kernel, monkeypatch):
    """MNTCR_CACHE under /tmp, which the guest mounts afresh: the kernel's modules still reach the
    guest's /lib/modules (ext4 loads; scenarios skipped it before) and the cache stays visible."""
    import subprocess
    import tempfile
    from vm import kernels
    from vm.qemu import QemuVM
    cache_dir = Path(tempfile.mkdtemp(prefix="mntcr-cache-", dir="/tmp"))
    try:
        # the cached kernel hard-linked under the new cache: the same files at a path under /tmp, no download
        (cache_dir / "kernels").mkdir()
        src = kernels.kernel_dir(KERNEL)
        subprocess.run(["cp", "-al", str(src), str(cache_dir / "kernels" / src.name)], check=True)
        monkeypatch.setenv("MNTCR_CACHE", str(cache_dir))
        k = kernels.cached(KERNEL)
        assert str(k.moddir).startswith(str(cache_dir) + "/")
        with QemuVM(k, cache_dir / "results") as v:
            r = v.run(f"modprobe ext4 && grep -qw ext4 /proc/filesystems && test -d {k.moddir} && echo ok")
        assert (r.status, r.stdout) == (0, "ok\n"), r.stderr
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
