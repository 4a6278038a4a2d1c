"""A/B restore CPU of two engine trees on the same kept scale images, alternated in the same minutes.

    python benchmarks/scale.py --mounts 1000,10000 --keep KEEP      # once: makes KEEP/nN/images
    python benchmarks/ab_restore.py KEEP --mounts 1000,10000 --rounds 4 BASE_TREE NEW_TREE

Each round restores each image once with each tree (`python -S -c 'from engine.cli import main ...' restore`, as cli.command runs it, from
that tree, e.g. two `git archive` snapshots), kills the restored tree and records the CPU time
(user+sys of the restore and every helper it waits for, RUSAGE_CHILDREN) and the wall time.
CPU moves much less with load than wall time on this shared machine; the last lines give, per
size, the median CPU of each tree and NEW/BASE. A failed restore stops the run with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

# Run in a child so that RUSAGE_CHILDREN counts this one restore and nothing else.
_MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.monotonic()
p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, text=True)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "wall": time.monotonic() - t,
                  "cpu": ru.ru_utime + ru.ru_stime, "err": p.stderr[-300:]}))
"""


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engine.cli import interpreter  # noqa: E402

# Both trees run by the interpreter cli.command() starts (this checkout's choice).
_PYTHON = interpreter()
# engine.cli's main as cli.command() runs it (without runpy), in a tree of any age
_LAUNCH = "import sys; from engine.cli import main; sys.exit(main())"


def restore_once(tree: str, images: str, pidfile: str) -> dict:
    """Restore `images` with the engine in `tree`, kill the restored tree; CPU and wall seconds."""
    cmd = [sys.executable, "-c", _MEASURE, _PYTHON, "-S", "-c", _LAUNCH, "restore",
           "-D", images, "--pidfile", pidfile,
           # scale.py's trees bind the host's /usr and /etc as externals
           "--external", "mnt[usr]:/usr", "--external", "mnt[etc]:/etc"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tree,
                         env=dict(os.environ, PYTHONPATH=tree), check=True)
    d = json.loads(out.stdout)
    if d["rc"] != 0:
        sys.exit(f"ab_restore: restore from {tree} of {images} failed: {d['err'].strip()}")
    with open(pidfile) as f:
        os.kill(int(f.read().split()[0]), signal.SIGKILL)
    os.unlink(pidfile)
    return d


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main() -> None:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("keep", help="the --keep directory of benchmarks/scale.py")
    p.add_argument("base"), p.add_argument("new")
    p.add_argument("--mounts", default="1000,10000")
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    sizes = [int(n) for n in a.mounts.split(",")]
    res: dict[tuple[int, str], list[dict]] = {}
    pidfile = os.path.join(a.keep, f"ab-{os.getpid()}.pid")
    for r in range(a.rounds):
        for n in sizes:
            for tree in (a.base, a.new):
                d = restore_once(tree, os.path.join(a.keep, f"n{n}", "images"), pidfile)
                res.setdefault((n, tree), []).append(d)
                print(f"round {r} N={n} {tree}: cpu {d['cpu']:.3f} s wall {d['wall']:.3f} s "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    for n in sizes:
        b = _median([d["cpu"] for d in res[(n, a.base)]])
        w = _median([d["cpu"] for d in res[(n, a.new)]])
        print(f"N={n}: median cpu base {b:.3f} s, new {w:.3f} s, new/base {w / b:.2f}")


if __name__ == "__main__":
    main()
