"""What a small dump and restore cost in CPU, and where it goes: start-up, imports, the run.

    python benchmarks/fixed_cost.py [SCENARIO.yaml] [--repeat N] [--tree DIR]

The scenario (default scenarios/basic/tmpfs.yaml: one tmpfs, a file, two fds, the cwd) is
started in the ns flavor, dumped and restored `--repeat` times by the engine in DIR (default this
checkout), each restore compared with the state before. Measured, as CPU time (user+sys of the
command and of every helper it waits for, from RUSAGE_CHILDREN), never wall time: this machine is
shared, and CPU time moves much less with load than wall time does.

Printed per verb (least of the repeats): `cpu` of `python -S -c LAUNCH dump|restore` (engine.cli's main, as
cli.command runs it); the
phases `start` (`python -S -c pass`), `imports` (`python -S -c 'import engine.cli, engine.VERB'`
less `start`) and `run` (the rest: the verb's own work, its helpers, tar, the stand-ins' start);
and, when `perf` can count the sched tracepoints, the `forks` and `execs` of the command and its
descendants and its `page-faults`. The last lines are one figure each:

    dump_cpu_s: X.XXX
    restore_cpu_s: X.XXX
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile

_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EVENTS = "sched:sched_process_fork,sched:sched_process_exec,page-faults"
# engine.cli's main as cli.command() runs it (without runpy), in a tree of any age
_LAUNCH = "import sys; from engine.cli import main; sys.exit(main())"


# perf mounts tracefs on /sys/kernel/tracing when it is not mounted, to read the tracepoints:
# never on the host (it was seen left there), always in a throwaway mount namespace of its own.
_PRIVATE = ["unshare", "-m", "--propagation", "private"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu_of(argv: list[str], env: dict, cwd: str, counts: bool) -> tuple[float, dict, subprocess.CompletedProcess]:
    """CPU seconds of running argv (and its waited-for helpers); perf's counts when `counts`."""
    with tempfile.NamedTemporaryFile(prefix="mntcr-perf.", mode="r") as out:
        wrap = _PRIVATE + ["perf", "stat", "-x", ",", "-o", out.name, "-e", _EVENTS, "--"] if counts else []
        c = _children_cpu()
        proc = subprocess.run(wrap + argv, env=env, cwd=cwd, capture_output=True, text=True)
        cpu = _children_cpu() - c
        found = {}
        for line in out.read().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[0].strip().isdigit():
                found[parts[2].split(":")[-1]] = int(parts[0])
    return cpu, found, proc


def _least(argv: list[str], env: dict, cwd: str, n: int = 5) -> float:
    best = float("inf")
    for _ in range(n):
        cpu, _, proc = _cpu_of(argv, env, cwd, False)
        proc.check_returncode()
        best = min(best, cpu)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", nargs="?", default=os.path.join(_PROJECT, "scenarios/basic/tmpfs.yaml"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tree", default=_PROJECT, help="checkout whose engine is measured (default: this one)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/fixed_cost.py: needs root (namespaces, mounts)", file=sys.stderr)
        return 2
    sys.path.insert(0, _PROJECT)
    from zdtm import scenario as scenario_mod
    from zdtm import snapshot
    from zdtm.flavors.ns import FLAVOR as NS

    tree = os.path.abspath(args.tree)
    env = dict(os.environ, PYTHONPATH=tree)
    env.pop("MNTCR_PROFILE", None)
    # Byte-compiled like an installed package (this machine sets PYTHONDONTWRITEBYTECODE).
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "engine")], check=True,
                   stdout=subprocess.DEVNULL)
    counts = subprocess.run(_PRIVATE + ["perf", "stat", "-e", _EVENTS, "--", "true"],
                            capture_output=True).returncode == 0
    from engine.cli import interpreter
    py = [interpreter(), "-S"]   # the interpreter cli.command() starts
    start = _least(py + ["-c", "pass"], env, tree)
    imports = {v: _least(py + ["-c", f"import engine.cli, engine.{v}"], env, tree) - start for v in ("dump", "restore")}
    sc = scenario_mod.load(args.scenario).render_all()[0]
    best: dict[str, tuple[float, dict]] = {}
    base = tempfile.mkdtemp(prefix="mntcr-fixed.")
    for i in range(args.repeat):
        wd = tempfile.mkdtemp(dir=base)
        running = NS.start(sc, wd)
        restored = None
        try:
            before = snapshot.take(running.pid, sc.check, sc.timeout)
            img = os.path.join(wd, "img")
            def measured(verb: str, a: list[str]) -> bool:
                cpu, found, proc = _cpu_of(py + ["-c", _LAUNCH, verb, *a], env, tree, counts)
                if proc.returncode:
                    print(f"{verb} failed: {proc.stderr.strip()}", file=sys.stderr)
                    return False
                best[verb] = min(best.get(verb, (cpu, found)), (cpu, found), key=lambda x: x[0])
                return True

            a = ["-t", str(running.pid), "-D", img]
            for e in running.externals:
                a += ["--external", f"mnt[{e.mountpoint}]:{e.key}"]
            if not measured("dump", a):
                return 1
            snapshot.wait_gone(running.pid, 10)
            NS.forget(running)
            pidfile = os.path.join(wd, "pid")
            a = ["-D", img, "--pidfile", pidfile, "--devices", "all"]
            for e in running.externals:
                a += ["--external", f"mnt[{e.key}]:{e.host_path}"]
            if not measured("restore", a):
                return 1
            with open(pidfile) as f:
                restored = int(f.read())
            equal, _ = snapshot.compare(before, snapshot.take(restored, sc.check, sc.timeout))
            if not equal:
                print("restored state differs", file=sys.stderr)
                return 1
        finally:
            if restored is not None:
                snapshot.kill_tree(restored)
            NS.stop(running)
    subprocess.run(["rm", "-rf", base])
    print(f"engine: {tree}; scenario {os.path.relpath(args.scenario, _PROJECT)}; least of {args.repeat}; "
          f"python -S start-up {start:.3f} s cpu")
    for verb, (cpu, found) in best.items():
        extra = (f", forks {found.get('sched_process_fork', '?')}, execs {found.get('sched_process_exec', '?')}, "
                 f"page-faults {found.get('page-faults', '?')}") if counts else ""
        print(f"{verb}: cpu {cpu:.3f} s = start {start:.3f} + imports {imports[verb]:.3f} + "
              f"run {cpu - start - imports[verb]:.3f}{extra}")
    for verb, (cpu, _) in best.items():
        print(f"{verb}_cpu_s: {cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
