"""The `vm` flavor: a scenario in a throwaway VM booting a kernel of the matrix.

A flavor is a place plus a transport. The place is the ns flavor inside the
guest; the transport is the VM's job channel and the writable results share:

    runner (pytest, host)                      guest (kernel K, vm/qemu.py or vm/vagrant.py)
      VmFlavor.run(spec, WORKDIR)
        writes WORKDIR/item-spec.pickle ── job ──▶  GUEST_PYTHON -m zdtm.item WORKDIR
                                                     = zdtm.item.run(spec, ns place) on kernel K
        reads WORKDIR/item-result.json ◀──────────  (WORKDIR is in the results share)

On the qemu fast path that command is a child forked by the guest's item
server (zdtm/itemserver.py, started by the VM's first item), which imported
the item path once: under TCG a fresh interpreter costs 8-11 s per item.

So the expectation, requirement and backend checks, setup, cycle and
teardown are the host's own code path (zdtm/item.py), run on kernel K. The
guest's interpreter is the provider's answer (`guest_python()`): the host's
own interpreter on the qemu fast path (the guest sees the host's / and the
paths it needs under /tmp or /run are kept), the box's python3 under Vagrant.

One VM per process (= per xdist worker), kernel, provider and accelerator,
booted on first use and reused for that worker's items; `close()` (also run
at exit) destroys them. Every workdir must lie under the results root (by
default the workdir's parent: the plugin's per-worker directory in the
cache): the only host directory the VM can write to.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import weakref

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Under TCG a guest runs several times slower than the host (more on a loaded one): the
# scenario's timeouts (setup, each backend call, each check) are multiplied by this.
TCG_TIMEOUT_SCALE = 5.0

_VMS: dict[tuple, object] = {}
# VMs whose guest runs zdtm/itemserver.py (started by their first item), and where it lives in the
# guest (its /run is the guest's own tmpfs).
_SERVING: "weakref.WeakSet" = weakref.WeakSet()
ITEM_SERVER_DIR = "/run/mntcr/items"
# Providers whose items go through the item server; Vagrant boxes keep a fresh interpreter per item.
ITEM_SERVER_PROVIDERS = ("qemu",)


def close_all() -> None:
    """Destroy every VM this process booted (also registered with atexit)."""
    while _VMS:
        _, vm = _VMS.popitem()
        try:
            vm.close()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


atexit.register(close_all)


def vm_for(kernel: str, provider: str, results_root: str, accel: str | None = None):
    """This process's started VM for (kernel, provider, results_root, accel), booted on first use."""
    key = (kernel, provider, results_root, accel)
    vm = _VMS.get(key)
    if vm is None:
        from vm.session import make_vm
        os.makedirs(results_root, exist_ok=True)
        vm = make_vm(kernel, provider, results_root, accel=accel)
        try:
            vm.start()
        except BaseException:
            vm.close()
            raise
        _VMS[key] = vm
    return vm


def run_in_vm(vm, key: tuple, argv: list[str], *, timeout: float = 600.0):
    """Run argv as root in `vm` (this worker's VM under `key`) with the project importable; a Result.

    If the call fails with VMError (timeout, panic) that VM is dropped, so the
    next item boots a fresh one.
    """
    from vm.errors import VMError
    try:
        return vm.run(argv, cwd=_PROJECT_ROOT, env={"PYTHONPATH": _PROJECT_ROOT}, timeout=timeout)
    except VMError:
        _VMS.pop(key, None)
        vm.close()
        raise


def item_command(vm, key: tuple, provider: str, workdir: str) -> list[str] | str:
    """What the guest runs for the item in `workdir`: the item server's client job, the server started
    first if this VM has none (qemu), else a fresh `python -m zdtm.item WORKDIR` (Vagrant).

    A server that does not start is a VMError (an infrastructure error, never a per-item fallback).
    """
    from vm.errors import VMError
    from zdtm import itemserver
    if provider not in ITEM_SERVER_PROVIDERS:
        return [vm.guest_python(), "-m", "zdtm.item", workdir]
    if vm not in _SERVING:
        r = run_in_vm(vm, key, itemserver.start_script(vm.guest_python(), ITEM_SERVER_DIR), timeout=600.0)
        if r.status != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            _VMS.pop(key, None)
            vm.close()
            raise VMError(f"kernel {key[0]}: the item server did not start in the VM (status {r.status}): {last}")
        _SERVING.add(vm)
    return itemserver.client_script(ITEM_SERVER_DIR, workdir)


class VmFlavor:
    """Items in a VM with a chosen kernel: ships each ItemSpec to the guest and reads its Outcome back."""

    name = "vm"

    def __init__(self, results_root: str | None = None):
        # The VM's writable share; None: each workdir's parent (the plugin's per-worker directory).
        self.results_root = results_root

    def unavailable(self, spec=None) -> str | None:
        """Why the item's kernel/provider cannot run here (before any boot), or None."""
        from vm import matrix, session
        kernel = getattr(spec, "kernel", None) or session.DEFAULT_KERNEL
        provider = getattr(spec, "provider", None) or session.DEFAULT_PROVIDER
        try:
            spec_row = matrix.lookup(kernel)
        except ValueError as e:
            return str(e)
        if spec_row.is_host:
            return "kernel 'host' is the running kernel: use the ns flavor"
        if os.geteuid() != 0:
            return "the vm flavor needs root (the scenario's namespaces are made inside the VM as root)"
        return session.unavailable(spec_row, provider)

    def run(self, spec, workdir: str):
        """Run the item in this worker's VM for (kernel, provider, accel); its zdtm.item.Outcome.

        VMError (boot failure, panic, timeout) propagates: it is an infrastructure
        error, not a scenario result.
        """
        from vm import session
        from vm.errors import VMError
        from zdtm import item
        skip = item.static_skip(spec)
        if skip:
            return item.Outcome("skip", skip)
        wd = os.path.abspath(workdir)
        root = os.path.realpath(self.results_root or os.path.dirname(wd))
        if os.path.commonpath([os.path.realpath(wd), root]) != root:
            raise ValueError(f"vm flavor: workdir {wd} is not under the results root {root}")
        os.makedirs(wd, exist_ok=True)
        for name in (item.RESULT_FILE, item.SPEC_FILE):
            if os.path.exists(os.path.join(wd, name)):
                os.unlink(os.path.join(wd, name))
        kernel = spec.kernel or session.DEFAULT_KERNEL
        provider = spec.provider or session.DEFAULT_PROVIDER
        vm = vm_for(kernel, provider, root, accel=spec.accel)
        if vm.accel == "tcg":
            # every instruction emulated: the scenario's timeouts were set for a real machine
            spec = dataclasses.replace(spec, timeout_scale=TCG_TIMEOUT_SCALE)
        item.write_spec(spec, wd)
        key = (kernel, provider, root, spec.accel)
        argv = item_command(vm, key, provider, wd)
        limit = max(120.0, spec.scenario.timeout * spec.timeout_scale * (2 + spec.iters * 3)) + 2 * spec.iters * spec.pause
        r = run_in_vm(vm, key, argv, timeout=limit)
        out = item.read_outcome(wd)
        if out is None:
            # the guest's runner is broken (with the item server: gone): the next item gets a fresh VM
            _VMS.pop(key, None)
            vm.close()
            raise VMError(f"kernel {kernel}: the item runner in the VM wrote no result "
                          f"(status {r.status}): {(r.stderr.strip().splitlines() or ['no output'])[-1]}")
        out.seconds = r.seconds
        if out.outcome == "skip" and out.kernel and out.kernel not in out.message:
            # a kernel-range skip already says "this is <release>"
            out.message += f" (kernel {out.kernel})"
        return out

    def close(self) -> None:
        """Destroy this worker's VMs (call at session end)."""
        close_all()


FLAVOR = VmFlavor()
