"""The `vm` flavor: a scenario in a throwaway VM booting a kernel of the matrix.

A scenario's process tree lives in the guest, so its pid means nothing to the
runner on the host: unlike `ns`, this flavor cannot hand a `Running` to
zdtm.cycle. It runs the whole scenario remotely instead:

    runner (pytest, host)                      guest (kernel K, vm/qemu.py or vm/vagrant.py)
      VmFlavor.run_scenario(...)  ── job ──▶   python3 -m zdtm.flavors.vm inner ...
                                                 = the ns flavor + zdtm.cycle.run on kernel K,
                                                   writing WORKDIR/vm-result.json
      reads WORKDIR/vm-result.json ◀── 9p ──   (WORKDIR is in the writable results share)

One VM per process (= per xdist worker) and kernel, booted on first use and
reused for that worker's scenarios; `close_all()` (also run at exit) destroys
them. Every workdir must lie under the results root given to `configure()`:
that directory is the only host directory the VM can write to.

Plugin wiring: `flavor = zdtm.flavors.get("vm")`; `flavor.configure(kernel=...,
provider=..., results_root=...)`; skip with `flavor.unavailable()`; since
`flavor.remote` is True, call `flavor.run_scenario(scenario, backend_name,
iters, workdir)` instead of start()/cycle.run(); it returns a VmOutcome
(outcome = pass | crfail | skip | fail | setup-error, message, kind, kernel).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field

from zdtm.flavors import Flavor, Running

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULT_FILE = "vm-result.json"
# Directories the guest mounts afresh (tmpfs, proc...): host files there are not visible inside.
_GUEST_PRIVATE = ("tmp", "run", "dev", "proc", "sys")
OUTCOMES = ("pass", "crfail", "skip", "fail", "setup-error")


@dataclass
class VmOutcome:
    """What a scenario did inside the VM (read back from WORKDIR/vm-result.json)."""

    outcome: str            # one of OUTCOMES
    message: str = ""       # the readable report (failure diff, skip reason, setup output)
    kind: str = ""          # CycleFailure.kind for failures (mismatch, cr-error, unexpected-success)
    kernel: str = ""        # uname -r inside the VM
    seconds: float = 0.0    # wall time of the job in the VM
    timings: dict = field(default_factory=dict)  # seconds per phase: setup, dump, restore, compare


# --- guest side ---------------------------------------------------------------

def _find_combination(path: str, params: dict):
    from zdtm import scenario as sc
    for s in sc.load(path).render_all():
        if s.params == params:
            return s
    raise ValueError(f"{path}: no parameter combination {params}")


def run_inside(path: str, params: dict, backend_name: str, iters: int, workdir: str) -> VmOutcome:
    """Run one scenario combination with the ns flavor on the running (guest) kernel."""
    from zdtm import backends, cycle
    from zdtm import scenario as sc
    from zdtm.flavors import SetupError
    from zdtm.flavors.ns import FLAVOR as NS
    release = os.uname().release
    s = _find_combination(path, params)
    reason = sc.missing_requirement(s.requires) or NS.unavailable()
    backend = backends.create(backend_name)
    reason = reason or backend.unavailable()
    expect = s.expectation(backend_name)
    if not reason and expect.outcome == "skip":
        reason = expect.reason
    if reason:
        return VmOutcome("skip", f"{reason} (kernel {release})", kernel=release)
    os.makedirs(workdir, exist_ok=True)
    timings: dict = {}
    try:
        with cycle.phase(timings, "setup"):
            running = NS.start(s, workdir)
    except SetupError as e:
        return VmOutcome("setup-error", str(e), kernel=release, timings=timings)
    try:
        out = cycle.run(s, backend, NS, running, workdir, iters=iters, timings=timings)
        return VmOutcome(out.kind, out.detail, kernel=release, timings=timings)
    except cycle.CycleFailure as e:
        return VmOutcome("fail", str(e), kind=e.kind, kernel=release, timings=timings)
    finally:
        NS.stop(running)


def inner_main(argv: list[str]) -> int:
    """`python3 -m zdtm.flavors.vm inner SCENARIO PARAMS_JSON BACKEND ITERS WORKDIR` (in the guest)."""
    path, params, backend_name, iters, workdir = argv[0], json.loads(argv[1]), argv[2], int(argv[3]), argv[4]
    try:
        res = run_inside(path, params, backend_name, iters, workdir)
    except Exception as e:  # noqa: BLE001 - anything else is reported as a failure with its text
        res = VmOutcome("fail", f"vm flavor inner runner: {type(e).__name__}: {e}", kind="error",
                        kernel=os.uname().release)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RESULT_FILE), "w") as f:
        json.dump(asdict(res), f, indent=1)
    return 0


# --- host side ----------------------------------------------------------------

_VMS: dict[tuple, object] = {}


def close_all() -> None:
    """Destroy every VM this process booted (also registered with atexit)."""
    while _VMS:
        _, vm = _VMS.popitem()
        try:
            vm.close()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


atexit.register(close_all)


def vm_for(kernel: str, provider: str, results_root: str, **opts):
    """This process's started VM for (kernel, provider, results_root), booted on first use."""
    key = (kernel, provider, os.path.realpath(results_root))
    vm = _VMS.get(key)
    if vm is None:
        from vm.session import make_vm
        os.makedirs(results_root, exist_ok=True)
        vm = make_vm(kernel, provider, results_root, **opts)
        try:
            vm.start()
        except BaseException:
            vm.close()
            raise
        _VMS[key] = vm
    return vm


def run_in_vm(kernel: str, provider: str, results_root: str, argv: list[str], *, timeout: float = 600.0,
              env: dict | None = None, cwd: str | None = None):
    """Run argv as root in this worker's VM with the project visible; a vm.qemu.Result.

    The VM is reused across calls; if a call fails with VMError (timeout, panic)
    that VM is dropped so the next call boots a fresh one.
    """
    from vm.errors import VMError
    vm = vm_for(kernel, provider, results_root)
    env = dict(env or {})
    env.setdefault("PYTHONPATH", _PROJECT_ROOT)
    try:
        return vm.run(argv, cwd=cwd or _PROJECT_ROOT, env=env, timeout=timeout)
    except VMError:
        _VMS.pop((kernel, provider, os.path.realpath(results_root)), None)
        vm.close()
        raise


class VmFlavor(Flavor):
    """Scenarios inside a VM with a chosen kernel (remote: use run_scenario, not start)."""

    name = "vm"
    remote = True

    def __init__(self):
        self.kernel = "6.1"
        self.provider = "qemu"
        self.results_root: str | None = None

    def configure(self, kernel: str, provider: str = "qemu", results_root: str | None = None) -> None:
        """Choose the kernel (a matrix name), the provider and the writable results root."""
        self.kernel, self.provider, self.results_root = kernel, provider, results_root

    def unavailable(self) -> str | None:
        from vm import matrix
        try:
            spec = matrix.lookup(self.kernel)
        except ValueError as e:
            return str(e)
        if spec.is_host:
            return "kernel 'host' is the running kernel: use the ns flavor"
        if os.geteuid() != 0:
            return "the vm flavor needs root (the scenario's namespaces are made inside the VM as root)"
        if self.provider == "qemu":
            if not shutil.which("qemu-system-x86_64"):
                return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
            if not spec.nine_p:
                return f"kernel {self.kernel} has no 9p; it runs with --vm-provider vagrant only"
        elif self.provider == "vagrant":
            if not os.path.exists(os.path.join(_PROJECT_ROOT, "vm", "vagrant.py")):
                return "the vagrant provider is not implemented yet (vm/vagrant.py); use --vm-provider qemu"
            if not shutil.which("vagrant"):
                return "vagrant is not installed (apt-get install vagrant vagrant-libvirt libvirt-daemon-system)"
        return None

    def run_scenario(self, scenario, backend_name: str, iters: int, workdir: str,
                     timeout: float | None = None) -> VmOutcome:
        """Run `scenario` (a zdtm.scenario.Scenario) with `backend_name` in the VM; its outcome.

        VMError (boot failure, panic, timeout) propagates: it is an infrastructure
        error, not a scenario result.
        """
        from vm.errors import VMError
        root = self.results_root or os.path.dirname(os.path.abspath(workdir))
        wd = os.path.abspath(workdir)
        if os.path.commonpath([wd, os.path.realpath(root)]) != os.path.realpath(root):
            raise ValueError(f"vm flavor: workdir {wd} is not under the results root {root}")
        os.makedirs(wd, exist_ok=True)
        result_path = os.path.join(wd, RESULT_FILE)
        if os.path.exists(result_path):
            os.unlink(result_path)
        path = os.path.abspath(scenario.path)
        if path.split("/")[1] in _GUEST_PRIVATE:
            # the guest has its own /tmp, /run...: hand it a copy inside the shared workdir
            shutil.copyfile(path, os.path.join(wd, os.path.basename(path)))
            path = os.path.join(wd, os.path.basename(path))
        argv = [sys.executable, "-m", "zdtm.flavors.vm", "inner", path,
                json.dumps(scenario.params), backend_name, str(iters), wd]
        limit = timeout or max(120.0, scenario.timeout * (2 + iters * 3))
        r = run_in_vm(self.kernel, self.provider, root, argv, timeout=limit)
        try:
            with open(result_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            raise VMError(f"kernel {self.kernel}: the scenario runner in the VM wrote no result "
                          f"(status {r.status}): {(r.stderr.strip().splitlines() or ['no output'])[-1]}") from None
        data["seconds"] = r.seconds
        return VmOutcome(**data)

    def start(self, scenario, workdir: str) -> Running:
        raise NotImplementedError("the vm flavor is remote: call run_scenario(), not start()")

    def stop(self, running: Running) -> None:
        raise NotImplementedError("the vm flavor is remote: call run_scenario(), not stop()")

    def close(self) -> None:
        """Destroy this worker's VMs (call at session end)."""
        close_all()


FLAVOR = VmFlavor()


if __name__ == "__main__":
    if sys.argv[1:2] == ["inner"]:
        sys.exit(inner_main(sys.argv[2:]))
    print("usage: python3 -m zdtm.flavors.vm inner SCENARIO PARAMS_JSON BACKEND ITERS WORKDIR", file=sys.stderr)
    sys.exit(2)
