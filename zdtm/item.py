"""Run one item: one rendered scenario x one backend in a place. The same path on the host and in a VM.

The plugin resolves an item's settings once, at collection, into an
`ItemSpec` and hands it to its flavor's `run(spec)`. The `ns` flavor calls
`run` here in the runner's own process; the `vm` flavor ships the spec into a
guest, where `python -m zdtm.item SPEC_FILE` calls the same `run` with the ns
place on the guest's kernel and writes the `Outcome` beside the spec. So the
expectation, requirement and backend checks, the setup, the C/R cycle and
the teardown happen in one function wherever the scenario runs.

    Outcome.outcome: pass | crfail | skip | fail | setup-error
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import sys
from dataclasses import asdict, dataclass, field

OUTCOMES = ("pass", "crfail", "skip", "fail", "setup-error")
SPEC_FILE = "item-spec.pickle"
RESULT_FILE = "item-result.json"


@dataclass(frozen=True)
class ItemSpec:
    """Everything an item needs, resolved once: the rendered scenario and the runner's choices."""

    scenario: object            # zdtm.scenario.Scenario (one rendered combination)
    backend: str                # backend name (--backend)
    flavor: str                 # flavor name (--flavor): which place the item wants
    iters: int                  # max(--iters, the scenario's iters)
    criu: str = "auto"          # --criu, for the criu backend
    kernel: str | None = None   # vm flavor: the matrix kernel (None: the flavor's default)
    provider: str | None = None  # vm flavor: --vm-provider (None: the flavor's default)
    accel: str | None = None    # vm flavor: --vm-accel kvm|tcg (None: MNTCR_VM_ACCEL, else probed)
    timeout_scale: float = 1.0  # the place is slower than the machine the timeouts were set for (TCG)
    update_golden: bool = False  # --update-golden: write the check's output as the golden output
    pause: float = 0.0          # --pause: seconds slept before each dump and before each after-snapshot


@dataclass
class Outcome:
    """What one item did. `kind` is CycleFailure.kind for failures; `kernel` is where it ran."""

    outcome: str
    message: str = ""
    kind: str = ""
    kernel: str = ""
    seconds: float = 0.0
    setup_output: str = ""
    timings: dict = field(default_factory=dict)  # seconds per phase: setup, dump, restore, compare

    def to_json(self) -> dict:
        return asdict(self)


# --- decisions that need no place ---------------------------------------------

# The skip reason of a scenario whose `flavors` leave out the item's flavor (zdtm.expected: not a
# kernel's result, so the kernel matrix does not check it).
FLAVOR_SKIP = "scenario runs only in flavors: "

def static_skip(spec: ItemSpec) -> str | None:
    """A skip reason known from the scenario alone (its expectation, its flavors), else None."""
    sc = spec.scenario
    expect = sc.expectation(spec.backend)
    if expect.outcome == "skip":
        return f"{spec.backend}: {expect.reason}"
    if spec.flavor not in sc.flavors:
        return FLAVOR_SKIP + ", ".join(sc.flavors)
    return None


_BACKENDS: dict = {}
_UNAVAILABLE: dict = {}


def backend(name: str, criu: str = "auto"):
    """This process's backend instance for (name, criu); created once, reused by later items."""
    from zdtm import backends
    key = (name, criu)
    if key not in _BACKENDS:
        _BACKENDS[key] = backends.create(name, criu=criu)
    return _BACKENDS[key]


def backend_unavailable(name: str, criu: str = "auto") -> str | None:
    """Why the backend cannot run here (probed once per process), or None."""
    key = (name, criu)
    if key not in _UNAVAILABLE:
        try:
            _UNAVAILABLE[key] = backend(name, criu).unavailable()
        except Exception as e:  # noqa: BLE001 - a broken backend is a skip with its reason
            _UNAVAILABLE[key] = f"{type(e).__name__}: {e}"
    return _UNAVAILABLE[key]


# --- the one item path -----------------------------------------------------------

def run(spec: ItemSpec, place, workdir: str, *, load_modules: bool = False, watch_sbs: bool = False) -> Outcome:
    """Run `spec` in `place` (zdtm.flavors.ns.FLAVOR or another Place) here; never raises for a C/R result.

    `load_modules` (in a VM guest): load the kernel modules of the filesystems
    the scenario requires before checking them, so a module that ships with the
    kernel never makes a scenario skip. `watch_sbs`: every superblock the trees
    made must go once they are stopped (zdtm/sbguard.py), else the item fails
    as a leak.
    """
    from zdtm import scenario as scenario_mod
    sc = spec.scenario
    if spec.timeout_scale != 1.0:
        # setup, every backend call and every check get the longer limit
        sc = dataclasses.replace(sc, timeout=sc.timeout * spec.timeout_scale)
    release = os.uname().release
    reason = static_skip(spec) or place.unavailable()
    if not reason:
        if load_modules:
            scenario_mod.load_filesystem_modules(sc.requires)
        reason = scenario_mod.missing_requirement(sc.requires)
    if not reason:
        why = backend_unavailable(spec.backend, spec.criu)
        reason = f"backend {spec.backend} unavailable: {why}" if why else None
    if reason:
        return Outcome("skip", reason, kernel=release)
    os.makedirs(workdir, exist_ok=True)
    from zdtm import sbguard
    watch = sbguard.Watch() if watch_sbs else None
    from zdtm import watchdog
    watchdog.left_running(grace=0)   # (forget roots guarded before this item: not its own)
    try:
        res, running = _run_cycle(sc, spec, place, workdir, release, watch)
        if res.outcome == "setup-error":
            return res
        leaks = list(running.leaks) + [_still_running(pid) for pid in watchdog.left_running()]
        if watch is not None:
            leaks += [sb.describe() for sb in watch.leaked()]
    finally:
        if watch is not None:
            watch.close()
    return _with_leaks(res, leaks)


def _run_cycle(sc, spec: ItemSpec, place, workdir: str, release: str, watch) -> tuple[Outcome, object]:
    """Start the scenario in `place`, run its C/R cycle, stop it: (outcome, the running scenario)."""
    from zdtm import cycle
    from zdtm.flavors import SetupError
    timings: dict[str, float] = {}
    running = None
    with contextlib.ExitStack() as undo:
        try:
            with cycle.phase(timings, "setup"):
                if sc.server:
                    _serve(sc, workdir, undo)
                running = place.start(sc, workdir)
        except SetupError as e:
            _write(workdir, "setup.log", str(e) + "\n")
            return Outcome("setup-error", str(e), kernel=release, timings=timings), running
        undo.callback(place.stop, running)
        _write(workdir, "setup.log", running.setup_output)
        bk = place.backend_for(running, backend(spec.backend, spec.criu))
        try:
            out = cycle.run(sc, bk, place, running, workdir, iters=spec.iters, update_golden=spec.update_golden,
                            timings=timings, watch=watch, pause=spec.pause)
            res = Outcome(out.kind, out.detail, kernel=release, setup_output=running.setup_output, timings=timings)
        except cycle.CycleFailure as e:
            res = Outcome("fail", str(e), kind=e.kind, kernel=release, setup_output=running.setup_output,
                          timings=timings)
    return res, running


def _still_running(pid: int) -> str:
    """A leak line for the root of a tree the item started or restored that is still alive."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        argv = "?"
    return f"a tree it started or restored is still running: pid {pid} ({argv}); end it with: kill -9 {pid}"


def _with_leaks(res: Outcome, leaks: list[str]) -> Outcome:
    """`res`, failed when the place could not release what the run made (a passing run's leak is its own)."""
    if not leaks:
        return res
    text = "teardown: " + "; ".join(leaks)
    if res.outcome in ("fail", "setup-error"):
        return dataclasses.replace(res, message=f"{res.message}\n{text}")
    return dataclasses.replace(res, outcome="fail", message=text, kind="leak")


def _serve(sc, workdir: str, undo: contextlib.ExitStack) -> None:
    """Start the scenario's external server (zdtm/fsserver.py) and join its network namespace until
    `undo` unwinds (after the tree is stopped: callbacks run last-registered first)."""
    from zdtm import fsserver
    from zdtm.flavors import SetupError
    try:
        server = fsserver.Server.start(*sc.server, workdir, sc.timeout)
    except fsserver.ServerError as e:
        raise SetupError(str(e)) from None
    undo.callback(server.stop)
    server.join()
    undo.callback(server.leave)


def _write(workdir: str, name: str, text: str) -> None:
    with open(os.path.join(workdir, name), "w") as f:
        f.write(text)


# --- the guest's end of the vm transport -----------------------------------------

def write_spec(spec: ItemSpec, workdir: str) -> str:
    """Store `spec` in WORKDIR for `python -m zdtm.item` (the guest reads it there); its path."""
    path = os.path.join(workdir, SPEC_FILE)
    with open(path, "wb") as f:
        pickle.dump(spec, f)
    return path


def read_outcome(workdir: str) -> Outcome | None:
    """The Outcome `python -m zdtm.item` wrote in WORKDIR, or None when there is none."""
    try:
        with open(os.path.join(workdir, RESULT_FILE)) as f:
            return Outcome(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def main(argv: list[str]) -> int:
    """`python -m zdtm.item WORKDIR`: run WORKDIR's spec with the ns place here, write its Outcome there."""
    if len(argv) != 1:
        print("usage: python3 -m zdtm.item WORKDIR (holding item-spec.pickle)", file=sys.stderr)
        return 2
    workdir = argv[0]
    try:
        with open(os.path.join(workdir, SPEC_FILE), "rb") as f:
            spec = pickle.load(f)
        from zdtm.flavors.ns import FLAVOR as NS
        from zdtm import watchdog
        watchdog.disable()   # (the VM ends with its item)
        res = run(spec, NS, workdir, load_modules=True)
    except Exception as e:  # noqa: BLE001 - anything else is reported as a failure with its text
        res = Outcome("fail", f"item runner in the VM: {type(e).__name__}: {e}", kind="error",
                      kernel=os.uname().release)
    with open(os.path.join(workdir, RESULT_FILE), "w") as f:
        json.dump(res.to_json(), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
