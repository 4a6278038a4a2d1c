"""Dump and restore time of the same scenarios with both backends, mntcr and criu, in one run.

    python benchmarks/backends.py [SCENARIO.yaml ...] [--criu auto|trixie|sid|system|PATH] [--repeat N]

Default scenarios: scenarios/propagation/*.yaml and scenarios/basic/*.yaml.
Every parameter combination that both backends are expected to pass (no
`expect` crfail/skip for either) is started in the ns flavor on the running
kernel, dumped and restored once per backend and repeat; the restored state is
compared with the state before dump (a differing restore is shown and left out
of the ratios, like a refusal).

What is measured (the smallest of --repeat runs):
- wall: the backend call as the runner makes it, i.e. the wall time of the CLI
  invocation: `python -S -c 'from engine.cli import run; run()' dump|restore` for mntcr (engine.cli.command;
  engine byte-compiled first), and for criu the
  `criu dump|restore` process (entered through the small helper that pivots
  into its userland for a userland criu), plus what the adapter does around it
  (the root-mount copy at dump). Both include a Python interpreter start-up,
  printed once as a baseline.
- cpu: user+sys CPU time of the backend call's processes that were waited for
  (RUSAGE_CHILDREN of this process around the call: the CLI and every helper it
  forked and reaped; criu's restored tasks are not reaped by criu and do not
  count, nor do mntcr's stand-ins). A shared machine inflates wall times
  several times over; CPU time moves much less, so compare engines by it there.
- criu-own: criu's own duration from the last timestamp of its log (no
  start-up, no userland entry).
The ratios are criu / mntcr, of wall and of CPU time; the last lines are their
geometric means over the cases: `criu/mntcr restore geomean: X.XX` (wall) and
`criu/mntcr restore cpu geomean: X.XX`.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _PROJECT)

from engine.cli import LAUNCH, interpreter  # noqa: E402
from zdtm import backends, snapshot  # noqa: E402
from zdtm import scenario as scenario_mod  # noqa: E402
from zdtm.backends import BackendError, Context  # noqa: E402
from zdtm.flavors import SetupError  # noqa: E402
from zdtm.flavors.ns import FLAVOR as NS  # noqa: E402

BACKENDS = ("mntcr", "criu")


class _Config:
    """Just what backends.create reads from a pytest config: the --criu choice."""

    def __init__(self, criu: str):
        self.criu = criu

    def getoption(self, name, default=None):
        return self.criu if name == "criu" else default



def _same_but_time(before, after) -> bool:
    """Equal but for the time namespace: criu 4.x restores a tree into a time namespace of its own
    (offsets that keep CLOCK_MONOTONIC going across the dump), mntcr keeps the one it was in; the
    snapshot tells them apart, which is not what this benchmark times."""
    def strip(text: str) -> str:
        return re.sub(r" timens=\S+", "", re.sub(r"(?m)^\s*time: .*\n?", "", text))
    return strip(before.text()) == strip(after.text())

def _children_cpu() -> float:
    """User+sys CPU seconds of every child process this process has reaped so far (and theirs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure_once(sc, backend, workdir: str) -> dict:
    """One start -> dump -> restore -> compare of scenario `sc` with `backend` in the existing empty
    `workdir`; timings or an error."""
    try:
        running = NS.start(sc, workdir)
    except SetupError as e:
        return {"error": f"setup: {str(e).splitlines()[0]}"}
    restored = None
    ctx = Context(scenario=sc, flavor=NS, log_dir=os.path.join(workdir, "logs"), workdir=workdir)
    try:
        before = snapshot.take(running.pid, sc.check, sc.timeout)
        images = os.path.join(workdir, "images")
        c0, t0 = _children_cpu(), time.monotonic()
        backend.dump(running.pid, images, running.externals, ctx)
        dump_wall, dump_cpu = time.monotonic() - t0, _children_cpu() - c0
        own_dump = _criu_own(backend, "dump")
        while snapshot.alive(running.pid) and time.monotonic() - t0 < 10:
            time.sleep(0.005)
        NS.forget(running)
        c1, t1 = _children_cpu(), time.monotonic()
        restored = backend.restore(images, running.externals, ctx)
        restore_wall, restore_cpu = time.monotonic() - t1, _children_cpu() - c1
        own_restore = _criu_own(backend, "restore")
        after = snapshot.take(restored, sc.check, sc.timeout)
        equal, _ = snapshot.compare(before, after)
        if not equal and not (backend.name == "criu" and _same_but_time(before, after)):
            return {"error": "restored state differs"}
        return {"dump": dump_wall, "restore": restore_wall, "dump_cpu": dump_cpu, "restore_cpu": restore_cpu,
                "own_dump": own_dump, "own_restore": own_restore}
    except BackendError as e:
        return {"error": f"{e.stage}: {str(e).splitlines()[0]}"}
    except snapshot.SnapshotError as e:
        return {"error": f"snapshot: {e}"}
    finally:
        if restored is not None:
            snapshot.kill_tree(restored)
        for fn in ctx.cleanups:
            fn()
        NS.stop(running)


def _criu_own(backend, action: str) -> float | None:
    impl = getattr(backend, "impl", None)
    return impl().timings.get(action, {}).get("criu") if impl else None


def measure(sc, backend, repeat: int, base: str) -> dict:
    """The smallest of `repeat` runs per figure, or the first error."""
    best: dict = {}
    for i in range(repeat):
        r = measure_once(sc, backend, tempfile.mkdtemp(prefix=f"{backend.name}.{i}.", dir=base))
        if "error" in r:
            return r
        for k, v in r.items():
            if v is not None:
                best[k] = min(best.get(k, v), v)
    return best


def compile_engine() -> None:
    """Byte-compile the engine as an installed package is (like scale.py): with PYTHONDONTWRITEBYTECODE
    set (this machine), every mntcr run would otherwise compile its modules again (~0.3 s)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(_PROJECT, "engine")],
                   check=True, stdout=subprocess.DEVNULL)


def startup_baseline(module: str = "engine.cli") -> tuple[float, float]:
    """Wall and CPU time (least of 5) of `python -S -c 'import engine.cli, MODULE'`: the interpreter
    start-up and imports every mntcr figure includes (the runner starts the engine as
    engine.cli.command does)."""
    env = dict(os.environ, PYTHONPATH=_PROJECT)
    wall = cpu = math.inf
    for _ in range(5):
        c, t = _children_cpu(), time.monotonic()
        subprocess.run([interpreter(), "-S", "-c", f"import engine.cli, {module}"], env=env, check=True, cwd=_PROJECT)
        wall, cpu = min(wall, time.monotonic() - t), min(cpu, _children_cpu() - c)
    return wall, cpu


def cases(paths: list[str]):
    """Scenario combinations both backends are expected to pass, and the ones left out with why."""
    keep, left = [], []
    for path in paths:
        for sc in scenario_mod.load(path).render_all():
            label = os.path.relpath(path, _PROJECT) + (f"[{sc.param_id}]" if sc.param_id else "")
            why = scenario_mod.missing_requirement(sc.requires)
            if "ns" not in sc.flavors:
                why = why or "not an ns-flavor scenario"
            for b in BACKENDS:
                e = sc.expectation(b)
                if e.outcome != "pass":
                    why = why or f"{b}: expect {e.outcome} ({e.reason})"
            (left if why else keep).append((label, sc, why))
    return keep, left


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", help="scenario files (default: propagation and basic)")
    ap.add_argument("--criu", default="auto", help="which criu (see zdtm/criu_env.py); default auto")
    ap.add_argument("--repeat", type=int, default=3, help="runs per scenario and backend; the smallest counts")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/backends.py: needs root (namespaces, mounts, criu)", file=sys.stderr)
        return 2
    paths = args.scenarios or sorted(glob.glob(os.path.join(_PROJECT, "scenarios/propagation/*.yaml"))
                                     + glob.glob(os.path.join(_PROJECT, "scenarios/basic/*.yaml")))
    bk = {name: backends.create(name, _Config(args.criu)) for name in BACKENDS}
    for name, b in bk.items():
        reason = b.unavailable()
        if reason:
            print(f"benchmarks/backends.py: backend {name} unavailable: {reason}", file=sys.stderr)
            return 1
    keep, left = cases(paths)
    compile_engine()
    print(f"kernel {os.uname().release}; {bk['criu'].impl().env().describe()}; mntcr: python -S -c '{LAUNCH}'")
    print(f"measured: wall = the backend's CLI invocation (python -S -c LAUNCH | criu, incl. start-up); "
          f"criu-own = criu's log time; smallest of {args.repeat}")
    for module in ("engine.cli", "engine.dump", "engine.restore"):
        wall, cpu = startup_baseline(module)
        print(f"python -S start-up + import {module} (in every mntcr figure): wall {wall:.3f} s, cpu {cpu:.3f} s")
    for label, _, why in left:
        print(f"left out: {label}: {why}")
    base = tempfile.mkdtemp(prefix="mntcr-bench-")
    w = max([len(label) for label, _, _ in keep] + [8])
    head = (f"{'scenario':<{w}} {'mntcr dump':>10} {'criu dump':>9} {'(own)':>6} {'ratio':>6} {'cpu m/c':>11} {'ratio':>6}  "
            f"{'mntcr rest':>10} {'criu rest':>9} {'(own)':>6} {'ratio':>6} {'cpu m/c':>11} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    dump_ratios, restore_ratios, own_ratios, dump_cpu_ratios, restore_cpu_ratios = [], [], [], [], []
    try:
        for label, sc, _ in keep:
            res = {name: measure(sc, b, args.repeat, base) for name, b in bk.items()}
            errors = [f"{n}: {r['error']}" for n, r in res.items() if "error" in r]
            if errors:
                print(f"{label:<{w}} not timed: {'; '.join(errors)}")
                continue
            m, c = res["mntcr"], res["criu"]
            rd, rr = c["dump"] / m["dump"], c["restore"] / m["restore"]
            # CPU time is counted in ticks of 1-4 ms: never divide by a zero.
            cd = c["dump_cpu"] / max(m["dump_cpu"], 1e-3)
            cr = c["restore_cpu"] / max(m["restore_cpu"], 1e-3)
            dump_ratios.append(rd)
            restore_ratios.append(rr)
            dump_cpu_ratios.append(cd)
            restore_cpu_ratios.append(cr)
            if c.get("own_restore"):
                own_ratios.append(c["own_restore"] / m["restore"])
            own = lambda v: f"{v:6.3f}" if v is not None else "     -"  # noqa: E731
            pair = lambda a, b: f"{a:5.3f}/{b:5.3f}"  # noqa: E731
            print(f"{label:<{w}} {m['dump']:10.3f} {c['dump']:9.3f} {own(c.get('own_dump'))} {rd:6.2f} "
                  f"{pair(m['dump_cpu'], c['dump_cpu'])} {cd:6.2f}  "
                  f"{m['restore']:10.3f} {c['restore']:9.3f} {own(c.get('own_restore'))} {rr:6.2f} "
                  f"{pair(m['restore_cpu'], c['restore_cpu'])} {cr:6.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("-" * len(head))
    print(f"timed {len(restore_ratios)} of {len(keep)} scenario cases (seconds; ratio = criu / mntcr, "
          f"of wall, then of cpu = user+sys of the waited-for processes)")
    if not restore_ratios:
        print("benchmarks/backends.py: no scenario was timed with both backends", file=sys.stderr)
        return 1
    print(f"criu/mntcr dump geomean: {geomean(dump_ratios):.2f}")
    print(f"criu-own/mntcr-wall restore geomean: {geomean(own_ratios):.2f}")
    print(f"criu/mntcr restore geomean: {geomean(restore_ratios):.2f}")
    print(f"criu/mntcr dump cpu geomean: {geomean(dump_cpu_ratios):.2f}")
    print(f"criu/mntcr restore cpu geomean: {geomean(restore_cpu_ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
