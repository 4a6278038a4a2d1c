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


def make_vm(kernel_name: str, provider: str, results_dir: str | Path, **opts):
    """A not yet started VM of `provider` booting matrix kernel `kernel_name`."""
    spec = matrix.lookup(kernel_name)
    if spec.is_host:
        raise VMError("kernel 'host' is the running kernel: it needs no VM (use the ns flavor)")
    if provider == "qemu":
        if not spec.nine_p:
            raise VMError(f"kernel {kernel_name} has no 9p: it cannot use the qemu fast path, use --provider vagrant")
        from vm.qemu import QemuVM
        return QemuVM(kernels.ensure(spec), results_dir, **opts)
    if provider == "vagrant":
        try:
            from vm.vagrant import VagrantVM
        except ImportError:
            raise VMError("provider vagrant is not implemented yet (vm/vagrant.py); use --provider qemu") from None
        return VagrantVM(kernels.ensure(spec), results_dir, **opts)
    raise VMError(f"unknown provider {provider!r}; use one of {', '.join(PROVIDERS)}")


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
