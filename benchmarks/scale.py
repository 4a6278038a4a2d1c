"""Scale benchmark: dump and restore trees of N mounts, against the kernel floor (not part of the test run).

    python benchmarks/scale.py --mounts 1000,10000 [--profile DIR] [--keep DIR]

For each N: a throwaway container (zdtm's ns flavor: new mount/PID/UTS/IPC
namespaces, a tmpfs root, the host's /usr, /etc... as external read-only
binds) is filled up to exactly N mounts in its namespace with a mix of tmpfs
mounts, binds, shared groups, slaves (and shared+slaves), overmount stacks,
unbindable mounts and plain binds as filler. Then, in the same run:

- `mntcr dump` and `mntcr restore` (the CLI, each in a fresh process, the
  engine byte-compiled first as an installed package is), wall time and peak RSS (the largest ru_maxrss among the mntcr process and its
  children, from RUSAGE_CHILDREN of a fresh wrapper process);
- the restored tree is compared with the original (engine.topology), so a
  broken restore is never timed as a fast one;
- the kernel floor: benchmarks/floor.c builds the same tree from an op list
  computed from the image beforehand (median of 3 runs).

The output ends with one line per figure:

    restore/floor N: X.XX
    dump_s N: X.XX
    restore_s N: X.XX
    peak_rss_mib N: X
    dump_cpu_s N: X.XX            (user+sys of the command and the helpers it waited for)
    restore_cpu_s N: X.XX
    growth 10000/1000: X.XX       (restore time at each size / at the next smaller size run)
    growth_cpu 10000/1000: X.XX   (the same for restore CPU time)
    criu/mntcr dump N: X.XX       (with --backend mntcr,criu: criu's wall / mntcr's, same run)
    criu/mntcr restore N: X.XX

`--backend mntcr,criu` also builds each tree a second time (a dump kills it) and dumps and
restores it with criu (zdtm/criu_env.py's userland, -v2), comparing that restored tree too, and
prints `criu/mntcr dump N` and `criu/mntcr restore N` (criu's wall / mntcr's).

`--profile DIR` runs dump and restore under cProfile (DIR/dump-N.prof,
DIR/restore-N.prof, and the forked restorer's DIR/restorer-N.prof through
MNTCR_PROFILE); timings then include the profiler's overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import floor  # noqa: E402
from engine import cli, forkrun, imageformat, kernel, mountinfo, topology  # noqa: E402
from zdtm import snapshot  # noqa: E402
from zdtm.flavors.ns import NsFlavor  # noqa: E402
from zdtm.scenario import Expectation, Requires, Scenario  # noqa: E402

BENCH = "/mnt/bench"
GROUP_MOUNTS = 11  # mounts one group adds (see _group)

# A fresh process that runs the command and reports its children's usage: the
# wrapper's own RSS never counts, and every mntcr helper (forked, then waited
# for) is folded into RUSAGE_CHILDREN.
_MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.monotonic()
p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, text=True)
dt = time.monotonic() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "wall": dt, "maxrss_kib": ru.ru_maxrss, "user": ru.ru_utime,
                  "sys": ru.ru_stime, "stdout": p.stdout, "stderr": p.stderr}))
"""


def _scenario() -> Scenario:
    return Scenario(path="<benchmarks/scale.py>", name="scale", params={}, description="scale benchmark",
                    setup=f"mkdir -p {BENCH}\nexec zdtm-hold\n", check=None, requires=Requires(),
                    expect={"*": Expectation("pass")}, flavors=("ns",), timeout=600.0, iters=1)


# --- building the tree (in a forked child inside the container's mount namespace) ---

def _mkdirs(*paths: str) -> None:
    for p in paths:
        os.makedirs(p, exist_ok=True)


def _group(k: int) -> None:
    """One group of GROUP_MOUNTS mounts: tmpfs, a shared mount with a peer, a shared+slave,
    a mount propagated to all three, a subdirectory bind, an overmount stack, an unbindable."""
    m, B = kernel.mount, kernel.MS_BIND
    g = f"{BENCH}/g{k}"
    _mkdirs(g)
    m(f"g{k}", g, "tmpfs", 0, "size=1m")                                   # 1
    _mkdirs(f"{g}/a", f"{g}/b", f"{g}/s", f"{g}/o", f"{g}/u", f"{g}/p")
    m(f"a{k}", f"{g}/a", "tmpfs", kernel.MS_NOSUID, "size=1m")              # 2
    _mkdirs(f"{g}/a/x", f"{g}/a/y")
    with open(f"{g}/a/y/data", "w") as f:
        f.write(f"group {k}\n")
    m(None, f"{g}/a", None, kernel.MS_SHARED)
    m(f"{g}/a", f"{g}/b", None, B)                                          # 3 peer of a
    m(f"{g}/a", f"{g}/s", None, B)                                          # 4
    m(None, f"{g}/s", None, kernel.MS_SLAVE)
    m(None, f"{g}/s", None, kernel.MS_SHARED)                               # shared + slave
    m(f"x{k}", f"{g}/a/x", "tmpfs", 0, "size=1m")                           # 5, 6, 7: a/x b/x s/x
    m(f"{g}/a/y", f"{g}/p", None, B)                                        # 8 root /y, peer of a
    m(f"o{k}", f"{g}/o", "tmpfs", kernel.MS_NODEV, "size=1m")               # 9
    m(f"{g}/a/y", f"{g}/o", None, B)                                        # 10 over 9
    m(f"{g}/a/x", f"{g}/u", None, B)                                        # 11
    m(None, f"{g}/u", None, kernel.MS_UNBINDABLE)


def _populate(pid: int, n: int) -> int:
    """In a forked child: enter the container's mount namespace and add mounts up to `n`; return the count."""
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    # The container's /proc shows its own pid namespace, where we have no pid: keep the host's.
    hostproc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
    kernel.setns(fd, kernel.CLONE_NEWNS)
    os.chdir("/")

    def count() -> int:
        with open(os.open("thread-self/mountinfo", os.O_RDONLY, dir_fd=hostproc), "rb") as f:
            return f.read().count(b"\n")

    kernel.mount("bench", BENCH, "tmpfs", 0, "size=64m")
    have = count()
    groups = max(0, (n - have) // GROUP_MOUNTS - 1)
    for k in range(groups):
        _group(k)
    have = count()
    _mkdirs(f"{BENCH}/fill/src")
    for k in range(n - have):
        os.mkdir(f"{BENCH}/fill/f{k}")
        kernel.mount(f"{BENCH}/fill/src", f"{BENCH}/fill/f{k}", None, kernel.MS_BIND)
    return count()


# --- measuring ---------------------------------------------------------------------

def _compile_once() -> None:
    """Byte-compile the engine as an installed package is (pip compiles wheels on install): with
    PYTHONDONTWRITEBYTECODE set, every mntcr run would otherwise compile it again (~50 ms)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(_ROOT, "engine")],
                   check=True, stdout=subprocess.DEVNULL)


def _measured(cmd: list[str], extra_env: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=_ROOT, **(extra_env or {}))
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env,
                         cwd=_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"measuring wrapper failed: {out.stderr.strip()}")
    res = json.loads(out.stdout)
    if res["rc"] != 0:
        err = (res["stderr"].strip().splitlines() or [f"exit {res['rc']}"])[-1]
        raise RuntimeError(f"{' '.join(cmd[2:5])}: {err}")
    return res


# The CLI run as a program ends with os._exit (engine/cli.py _exit_now), before `-m cProfile`
# could write its profile: the profiled run calls cli.main with its arguments, which returns.
_PROFILED = ("import cProfile, sys\nfrom engine import cli\nout = sys.argv.pop(1)\n"
             "cProfile.run('code = cli.main(sys.argv[1:])', out)\nsys.exit(code)")


def _mntcr(verb: str, args: list[str], profile: str | None) -> list[str]:
    if profile:
        return [sys.executable, "-S", "-c", _PROFILED, profile, verb, *args]
    return cli.command(verb, *args)


def _validate_cpu(doc: dict, runs: int = 5) -> float:
    """CPU seconds of the image validator on this manifest (the least of `runs`: only noise adds).

    Dump's commit and restore's load each run it once; the figure bounds what checking an
    untrusted image costs against the dump and restore it is part of (issue 12: at most 5%)."""
    best = float("inf")
    for _ in range(runs):
        t = time.process_time()
        imageformat.validate(doc)
        best = min(best, time.process_time() - t)
    return best


def run_one(n: int, work: str, binary: str, profile_dir: str | None) -> dict:
    """Build a tree of `n` mounts, dump, restore, compare, and run the floor; return the figures."""
    flavor = NsFlavor()
    cdir = os.path.join(work, f"n{n}")
    os.makedirs(cdir)
    running = flavor.start(_scenario(), cdir)
    restored = None
    try:
        t = time.monotonic()
        got = forkrun.run(_populate, running.pid, n)
        build_s = time.monotonic() - t
        if got != n:
            raise RuntimeError(f"built {got} mounts, wanted {n}")
        before = mountinfo.read_pid(running.pid)
        images = os.path.join(cdir, "images")
        ext_dump = [a for e in running.externals for a in ("--external", f"mnt[{e.mountpoint}]:{e.key}")]
        ext_rest = [a for e in running.externals for a in ("--external", f"mnt[{e.key}]:{e.host_path}")]
        prof = (lambda verb: os.path.join(profile_dir, f"{verb}-{n}.prof")) if profile_dir else (lambda verb: None)
        dump = _measured(_mntcr("dump", ["-t", str(running.pid), "-D", images, *ext_dump], prof("dump")))
        flavor.forget(running)
        pidfile = os.path.join(cdir, "restored.pid")
        error = None
        try:
            rest = _measured(_mntcr("restore", ["-D", images, "--pidfile", pidfile, *ext_rest], prof("restore")),
                             {"MNTCR_PROFILE": prof("restorer")} if profile_dir else None)
        except RuntimeError as e:
            # Still measure the floor: the figure says the restore failed, with its error line.
            error, equal = str(e), False
            rest = {"wall": float("nan"), "maxrss_kib": 0, "user": float("nan"), "sys": float("nan")}
            print(f"N={n}: restore failed: {error}", file=sys.stderr)
        if error is None and not os.path.exists(pidfile):
            # Under cProfile the CLI's exit status is lost: a missing pid file is the failure.
            error, equal = "restore left no pid file (see the restore profile's run)", False
            print(f"N={n}: restore failed: {error}", file=sys.stderr)
        if error is None:
            with open(pidfile) as f:
                restored = int(f.read())
            after = mountinfo.read_pid(restored)
            equal, report = topology.diff_report(before, after, names=("before dump", "after restore"))
            if not equal:
                print(f"N={n}: the restored tree differs:\n" + "\n".join(report.splitlines()[:40]),
                      file=sys.stderr)
        with open(os.path.join(images, "mntcr.json")) as f:
            doc = json.load(f)
        validate_s = _validate_cpu(doc)
        ops = floor.ops_from_image(doc, {e.key: e.host_path for e in running.externals})
        runs = []
        for _ in range(3):
            secs, text = floor.run_floor(binary, ops, cdir)
            runs.append(secs)
        f_equal, f_report = topology.diff_report(before, mountinfo.parse(text), names=("before dump", "floor"))
        if not f_equal:
            print(f"N={n}: the floor's tree differs:\n" + "\n".join(f_report.splitlines()[:40]), file=sys.stderr)
        image_bytes = sum(os.path.getsize(os.path.join(images, x)) for x in os.listdir(images))
        return {"n": n, "build_s": build_s, "dump_s": dump["wall"], "restore_s": rest["wall"],
                "dump_rss_mib": dump["maxrss_kib"] / 1024, "restore_rss_mib": rest["maxrss_kib"] / 1024,
                "dump_cpu_s": dump["user"] + dump["sys"], "restore_cpu_s": rest["user"] + rest["sys"],
                "floor_s": statistics.median(runs), "equal": equal, "floor_equal": f_equal,
                "floor_ops": len(ops), "image_mib": image_bytes / (1 << 20),
                "superblocks": len(doc["superblocks"]), "error": error, "validate_s": validate_s}
    finally:
        if restored is not None:
            snapshot.kill_tree(restored)
        flavor.stop(running)


def run_criu(n: int, work: str, criu) -> dict:
    """The same N-mount tree (built again the same way in a second container: a dump kills the tree)
    dumped and restored by criu (`criu`: a zdtm.criu_backend.CriuBackend); the restored tree is
    compared with its original too. Wall time of each criu call as the runner makes it (the userland
    entry included), and criu's own time from its log."""
    flavor = NsFlavor()
    cdir = os.path.join(work, f"criu{n}")
    os.makedirs(cdir)
    running = flavor.start(_scenario(), cdir)
    restored = None
    try:
        got = forkrun.run(_populate, running.pid, n)
        if got != n:
            raise RuntimeError(f"built {got} mounts, wanted {n}")
        before = mountinfo.read_pid(running.pid)
        images, logs = os.path.join(cdir, "images"), os.path.join(cdir, "logs")
        error = None
        try:
            criu.dump(running.pid, images, {e.mountpoint: e.key for e in running.externals}, logs)
            flavor.forget(running)
            restored = criu.restore(images, {e.key: e.host_path for e in running.externals}, None, logs)
        except Exception as e:  # noqa: BLE001 - criu's refusal is a figure ("failed: ..."), not a crash
            error = str(e).splitlines()[0]
            print(f"N={n}: criu failed: {error}", file=sys.stderr)
        equal = False
        if restored is not None:
            equal, report = topology.diff_report(before, mountinfo.read_pid(restored),
                                                 names=("before dump", "after criu restore"))
            if not equal:
                print(f"N={n}: the criu-restored tree differs:\n" + "\n".join(report.splitlines()[:40]),
                      file=sys.stderr)
        t = criu.timings
        return {"error": error, "equal": equal,
                "dump_s": t.get("dump", {}).get("wall"), "restore_s": t.get("restore", {}).get("wall"),
                "dump_own_s": t.get("dump", {}).get("criu"), "restore_own_s": t.get("restore", {}).get("criu")}
    finally:
        if restored is not None:
            snapshot.kill_tree(restored)
        flavor.stop(running)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark for each N of --mounts and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mounts", default="100,1000,10000,50000",
                   help="comma-separated tree sizes (total mounts in the container's namespace)")
    p.add_argument("--profile", metavar="DIR", help="run dump and restore under cProfile, profiles into DIR")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep images and floor op lists")
    p.add_argument("--backend", default="mntcr", choices=("mntcr", "mntcr,criu"), metavar="mntcr|mntcr,criu",
                   help="mntcr (default) or mntcr,criu, which also dumps and restores the same trees with criu (zdtm/criu_env.py's "
                        "criu) in the same run and prints criu/mntcr per N")
    p.add_argument("--criu", default="auto", help="which criu (see zdtm/criu_env.py); default auto")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.mounts.split(",") if x]
    if os.geteuid() != 0:
        print("scale.py: needs root (namespaces and mounts in a throwaway container)", file=sys.stderr)
        return 2
    # Restore keeps an fd per mount and one per mount point: lift the fd limit (root may) so the
    # benchmark measures time, not the distribution's default hard limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * max(sizes) + 4096
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError) as e:
            print(f"scale.py: note: RLIMIT_NOFILE hard limit stays {hard} ({e}); restore needs about "
                  f"2 fds per mount", file=sys.stderr)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    work = args.keep or tempfile.mkdtemp(prefix="mntcr-scale-")
    os.makedirs(work, exist_ok=True)
    _compile_once()
    criu = None
    if "criu" in args.backend.split(","):
        from zdtm import criu_backend
        # -v2: criu's default verbosity, as a user runs it (-v4 writes a log line per mount)
        criu = criu_backend.CriuBackend(args.criu, verbosity=2, timeout=1800.0)
        ok, why = criu.available()
        if not ok:
            print(f"scale.py: criu unavailable: {why}", file=sys.stderr)
            return 2
    results = []
    try:
        binary = floor.compile_floor(work)
        for n in sizes:
            r = run_one(n, work, binary, args.profile and os.path.abspath(args.profile))
            results.append(r)
            print(f"N={n}: build {r['build_s']:.2f}s, dump {r['dump_s']:.2f}s (cpu {r['dump_cpu_s']:.2f}s, "
                  f"rss {r['dump_rss_mib']:.0f} MiB), restore {r['restore_s']:.2f}s (cpu {r['restore_cpu_s']:.2f}s, "
                  f"rss {r['restore_rss_mib']:.0f} MiB), floor {r['floor_s'] * 1000:.1f} ms ({r['floor_ops']} ops), "
                  f"{r['superblocks']} superblocks, image {r['image_mib']:.1f} MiB, "
                  f"restored tree {'restore failed' if r['error'] else 'equal' if r['equal'] else 'DIFFERENT'}, "
                  f"floor tree {'equal' if r['floor_equal'] else 'DIFFERENT'}", flush=True)
            if criu is not None:
                r["criu"] = c = run_criu(n, work, criu)
                sec = lambda v: f"{v:.2f}s" if v is not None else "-"  # noqa: E731
                own = lambda v: f" (own {v:.2f}s)" if v is not None else ""  # noqa: E731
                print(f"N={n}: criu dump {sec(c['dump_s'])}{own(c['dump_own_s'])}, restore "
                      f"{sec(c['restore_s'])}{own(c['restore_own_s'])}, criu-restored tree "
                      f"{'failed: ' + c['error'] if c['error'] else 'equal' if c['equal'] else 'DIFFERENT'}",
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    by_n = {r["n"]: r for r in results}
    for r in results:
        n = r["n"]
        if r["error"]:
            # No number to give: say so on the figure's own line rather than print a fake one.
            print(f"restore/floor {n}: failed ({r['error']})")
        else:
            print(f"restore/floor {n}: {r['restore_s'] / r['floor_s']:.2f}")
        print(f"dump_s {n}: {r['dump_s']:.2f}")
        print(f"restore_s {n}: " + ("failed" if r["error"] else f"{r['restore_s']:.2f}"))
        print(f"dump_cpu_s {n}: {r['dump_cpu_s']:.2f}")
        print(f"restore_cpu_s {n}: " + ("failed" if r["error"] else f"{r['restore_cpu_s']:.2f}"))
        print(f"peak_rss_mib {n}: {max(r['dump_rss_mib'], r['restore_rss_mib']):.0f}")
        print(f"validate_ms {n}: {r['validate_s'] * 1000:.1f}")
        # CPU against CPU: the validator's share of each command, independent of the wall clock's noise.
        print(f"validate/dump_cpu {n}: {100 * r['validate_s'] / r['dump_cpu_s']:.1f}%")
        if not r["error"]:
            print(f"validate/restore_cpu {n}: {100 * r['validate_s'] / r['restore_cpu_s']:.1f}%")
        c = r.get("criu")
        if c is not None:
            for verb in ("dump", "restore"):
                mine = r[f"{verb}_s"]
                if c["error"] or not c["equal"] or (verb == "restore" and r["error"]):
                    print(f"criu/mntcr {verb} {n}: failed ({c['error'] or r['error'] or 'a restored tree differs'})")
                else:
                    print(f"criu/mntcr {verb} {n}: {c[f'{verb}_s'] / mine:.2f}")
    # Growth between each size and the next one run (10000/1000, 90000/10000...): restore wall time,
    # and restore CPU time, which a loaded machine moves much less.
    sizes = sorted(by_n)
    for a, b in zip(sizes, sizes[1:]):
        if by_n[a]["error"] or by_n[b]["error"]:
            print(f"growth {b}/{a}: failed (a restore failed)")
            continue
        print(f"growth {b}/{a}: {by_n[b]['restore_s'] / by_n[a]['restore_s']:.2f}")
        print(f"growth_cpu {b}/{a}: {by_n[b]['restore_cpu_s'] / by_n[a]['restore_cpu_s']:.2f}")
    return 0 if all(r["equal"] and r["floor_equal"] and r.get("criu", {}).get("equal", True)
                    for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
