"""One C/R cycle of a started scenario: snapshot -> dump -> restore -> snapshot -> compare, N times.

The flavor has already started the scenario (its setup ran; a setup failure
never reaches here). `run` returns an Outcome when the scenario behaved as
expected for the backend and raises CycleFailure otherwise:

- before anything: the scenario's check exits 0 and prints its golden output
  (NAME.out, zdtm/golden.py) when it has one;
- expect pass: every dump and restore succeeds and every restored state equals
  the state before the first dump (iteration k dumps the tree iteration k-1
  restored);
- expect crfail: the backend must refuse (BackendError) at some dump or
  restore; if every iteration succeeds that is an "unexpected success".
- expect differs (a known bug of the backend, e.g. a differential finding
  against criu): every dump and restore succeeds and some restored state
  differs from the original (reported like crfail, with the diff's first
  lines); a refusal fails, and an equal restore is an "unexpected success".

Snapshots and backend logs are written to `workdir` (kept in the report
directory when the test fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass

from zdtm import golden, snapshot, watchdog
from zdtm.backends import BackendError, Context


class CycleFailure(Exception):
    """The scenario did not behave as expected; the message is the readable report."""

    def __init__(self, message: str, kind: str = "fail"):
        self.kind = kind
        super().__init__(message)


@dataclass
class Outcome:
    """How an expected outcome was reached: 'pass', or 'crfail' with the backend's error."""

    kind: str
    detail: str = ""


def _save(path: str, snap: snapshot.Snapshot) -> None:
    with open(path, "w") as f:
        json.dump(snap.to_json(), f, indent=1)



def _add(timings: dict | None, name: str, started: float) -> None:
    if timings is not None:
        timings[name] = timings.get(name, 0.0) + time.monotonic() - started


@contextlib.contextmanager
def phase(timings: dict | None, name: str):
    """Add the wall time of the block to timings[name] (seconds), also when it raises."""
    started = time.monotonic()
    try:
        yield
    finally:
        _add(timings, name, started)


def _check_golden(scenario, output: str, workdir: str, update: bool) -> None:
    """The check before dump must exit 0 and print the golden output (or, updating, writes it)."""
    if update and not golden.exit_status(output):
        golden.update(scenario, output)
        return
    problem = golden.verify(scenario, output)
    if problem:
        with open(os.path.join(workdir, "check.out.bad"), "w") as f:  # fstests' NAME.out.bad
            f.write(output)
        raise CycleFailure(problem, kind="check")


def run(scenario, backend, flavor, running, workdir: str, iters: int = 1, topology=None,
        update_golden: bool = False, timings: dict | None = None, watch=None, pause: float = 0.0) -> Outcome:
    """Run `iters` dump/restore iterations on `running`; see the module docstring.

    `update_golden`: write the check's output before dump as the scenario's golden
    output (zdtm/golden.py) instead of comparing it. `timings`, when given, receives
    the seconds spent per phase, summed over the iterations: dump, restore, compare
    (snapshots and their comparison). `watch` (a zdtm.sbguard.Watch), when given, is
    shown every tree: the started one and each restored one. `pause` (--pause): seconds slept
    before each dump and before each snapshot after a restore (time-dependent state shows).
    """
    expect = backend.expectation(scenario)
    crfail = expect.outcome == "crfail"
    differs = expect.outcome == "differs"
    timeout = scenario.timeout
    # Mappings are compared except on the flavor's host mounts, where a stand-in maps its own
    # interpreter and libraries (engine/mappings.py).
    host = tuple(e.mountpoint for e in running.externals)
    with phase(timings, "compare"):
        before = snapshot.take(running.pid, scenario.check, timeout, topology=topology, ignore_maps_on=host)
    if watch is not None:
        watch.add_tree(running.pid)
    _save(os.path.join(workdir, "before.json"), before)
    with open(os.path.join(workdir, "before.txt"), "w") as f:
        f.write(before.text())
    if scenario.check:
        _check_golden(scenario, before.check_output, workdir, update_golden)
    pid = running.pid
    restored: int | None = None
    cleanups: list = []
    try:
        for i in range(iters):
            ctx = Context(scenario=scenario, flavor=flavor, log_dir=os.path.join(workdir, "logs"),
                          workdir=workdir, iteration=i)
            images = os.path.join(workdir, f"images.{i}")
            stage = "dump"
            time.sleep(pause)
            try:
                with phase(timings, "dump"):
                    backend.dump(pid, images, running.externals, ctx)
                    # The backend killed the tree; make sure, so restore cannot meet the old one.
                    if not snapshot.wait_gone(pid):
                        snapshot.kill_tree(pid)
                if i == 0:
                    flavor.forget(running)
                for fn in cleanups:
                    fn()
                cleanups = []
                restored = None
                stage = "restore"
                with phase(timings, "restore"):
                    restored = pid = backend.restore(images, running.externals, ctx)
                    watchdog.guard(pid)
                if watch is not None:
                    watch.add_tree(pid)
            except BackendError as e:
                where = f"{stage} failed (iteration {i + 1}/{iters})"
                if crfail:
                    return Outcome("crfail", f"{where}: {e}")
                log = f"\n[log: {e.log}]" if e.log else ""
                raise CycleFailure(f"{backend.name} {where}: {e}{log}", kind="cr-error") from None
            finally:
                cleanups += ctx.cleanups
            time.sleep(pause)
            started = time.monotonic()
            try:
                after = snapshot.take(pid, scenario.check, timeout, topology=topology, ignore_maps_on=host)
            except snapshot.SnapshotError as e:
                raise CycleFailure(f"after {backend.name} restore (iteration {i + 1}/{iters}): {e}") from None
            if getattr(backend, "carries_clocks", False):   # (a test's stand-in backend may not say)
                after = snapshot.clocks_carried(before, after)
            _save(os.path.join(workdir, f"after.{i}.json"), after)
            with open(os.path.join(workdir, f"after.{i}.txt"), "w") as f:
                f.write(after.text())
            equal, report = snapshot.compare(before, after, names=("before dump", f"after restore {i + 1}"),
                                             topology=topology)
            _add(timings, "compare", started)
            if not equal:
                lead = (f"{backend.name}: restored state differs from the state before dump "
                        f"(iteration {i + 1}/{iters})")
                if differs:
                    return Outcome("crfail", f"differs as expected ({expect.reason}): {lead}:\n{report}")
                if crfail:
                    lead += f"; the scenario expects crfail ({expect.reason}) but the backend did not refuse"
                raise CycleFailure(lead + ":\n" + report, kind="mismatch")
        if differs:
            raise CycleFailure(f"unexpected success: {backend.name} was expected to restore a different state "
                               f"({expect.reason}), but {iters} dump/restore iteration(s) restored the same state",
                               kind="unexpected-success")
        if crfail:
            raise CycleFailure(f"unexpected success: {backend.name} was expected to fail ({expect.reason}), "
                               f"but {iters} dump/restore iteration(s) succeeded with the same state",
                               kind="unexpected-success")
        return Outcome("pass")
    finally:
        if restored is not None:
            snapshot.kill_tree(restored)
        for fn in cleanups:
            fn()
