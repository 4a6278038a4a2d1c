"""Choose a provider and open a VM: the one entry point the CLI, the flavor and benchmarks use.

    with open_vm("6.1", "qemu", results_dir) as vm:
        result = vm.run(["uname", "-r"])      # Result(status, stdout, stderr, seconds)

Both providers give an object with start(), run(argv, cwd=, env=, timeout=,
on_output=) -> Result and close(), and `boot_seconds` after start().
"""

from __future__ import annotations

from pathlib import Path

from vm import kernels, matrix
from vm.errors import VMError

PROVIDERS = ("qemu", "vagrant")
# The defaults of --kernel/--vm-provider (pytest) and `mntcr vm run --provider`: here only.
DEFAULT_KERNEL = "6.1"
DEFAULT_PROVIDER = "qemu"


def unavailable(spec: matrix.KernelSpec, provider: str) -> str | None:
    """Why `provider` cannot boot matrix row `spec` on this machine (one line), or None. Boots nothing."""
    if provider == "qemu":
        from vm import qemu
        if not spec.nine_p:
            return f"kernel {spec.name} has no 9p; it runs with --vm-provider vagrant only"
        return qemu.unavailable()
    if provider == "vagrant":
        from vm import vagrant
        return vagrant.unavailable()
    return f"unknown VM provider {provider!r}; use one of {', '.join(PROVIDERS)}"


def make_vm(kernel_name: str, provider: str, results_dir: str | Path, *, accel: str | None = None, **opts):
    """A not yet started VM of `provider` booting matrix kernel `kernel_name`.

    `accel` (kvm|tcg) forces the accelerator; None takes MNTCR_VM_ACCEL, else
    the cached KVM probe (vm.accel).
    """
    spec = matrix.lookup(kernel_name)
    if spec.is_host:
        raise VMError("kernel 'host' is the running kernel: it needs no VM (use the ns flavor)")
    reason = unavailable(spec, provider)
    if reason:
        raise VMError(reason)
    if provider == "qemu":
        from vm.qemu import QemuVM
        return QemuVM(kernels.ensure(spec), results_dir, accel=accel, **opts)
    from vm.vagrant import VagrantVM
    return VagrantVM(kernels.ensure(spec), results_dir, accel=accel, **opts)


class open_vm:
    """Context manager: a started VM, closed (destroyed) on exit."""

    def __init__(self, kernel_name: str, provider: str, results_dir: str | Path, **opts):
        self.vm = make_vm(kernel_name, provider, results_dir, **opts)

    def __enter__(self):
        try:
            self.vm.start()
        except BaseException:
            self.vm.close()
            raise
        return self.vm

    def __exit__(self, *exc) -> None:
        self.vm.close()
