"""Interpreter steps (opcodes) of one restore: deterministic, so a measure that a loaded machine does not move.

    python benchmarks/scale.py --mounts 1000,10000 --keep KEEP        # once: makes KEEP/nN/images
    python -S benchmarks/restore_opcodes.py TREE KEEP/n10000/images [--top 40]

Restores the image once with the engine in TREE (e.g. a `git archive` snapshot) and kills the
restored tree. `sys.settrace` opcode events count the steps of `image.load` in `mntcr restore`
(parse and validation) and of the forked restorer (its whole body, per phase: the _Restorer
methods below, nested ones counted in their callers too), with the functions that take the most.
The restorer then runs ~20x slower, so the filler is always done before the mounts are attached
(as on a slow machine). Each wrapped phase call adds ~28 steps (one a mount for `_attach`).
Steps are a proxy: on this machine a pass over 10,000 mount records is bound by memory, so 3x
fewer steps in the mount records' check gave ~13% less CPU there (benchmarks/HISTORY.md, session 13).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

PHASES = ("__init__", "create_superblocks", "assemble", "_plan_fds", "_count_sb_uses", "_attach",
          "restore_sharing", "open_externals", "spawn_standins", "place_processes")


class Counter:
    """Opcode events of the frames traced, in all and per function (qualified name)."""

    def __init__(self):
        self.total = 0
        self.by_fn: dict[str, int] = {}

    def trace(self, frame, event, arg):
        """sys.settrace hook: asks for opcode events in every frame, counts them."""
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.total += 1
            name = frame.f_code.co_qualname
            self.by_fn[name] = self.by_fn.get(name, 0) + 1
        return self.trace

    def report(self, title: str, top: int) -> None:
        """Write the total and the `top` functions to stderr, then start again from zero."""
        lines = [f"OPS {title} {self.total}"]
        lines += [f"  FN {n:10} {k}" for k, n in sorted(self.by_fn.items(), key=lambda kv: -kv[1])[:top]]
        os.write(2, ("\n".join(lines) + "\n").encode())
        self.total = 0
        self.by_fn.clear()


def _counted(fn, counter: Counter, title: str, top: int, phases: dict | None = None):
    def run(*a, **k):
        sys.settrace(counter.trace)
        try:
            return fn(*a, **k)
        finally:
            sys.settrace(None)
            for name, n in (phases or {}).items():
                os.write(2, f"PHASE {name:24} {n}\n".encode())
            counter.report(title, top)
    return run


def _phase(cls, name: str, counter: Counter, phases: dict) -> None:
    fn = getattr(cls, name)

    def timed(*a, **k):
        start = counter.total
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0) + counter.total - start
    setattr(cls, name, timed)


def main() -> None:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tree", help="the engine tree to run (its directory holds engine/)")
    p.add_argument("images", help="an image directory of benchmarks/scale.py --keep")
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    sys.path.insert(0, os.path.abspath(a.tree))
    from engine import cli, image, restore
    counter, phases = Counter(), {}
    for name in PHASES:
        if hasattr(restore._Restorer, name):
            _phase(restore._Restorer, name, counter, phases)
    restore._restore_body = _counted(restore._restore_body, counter, "restorer", a.top, phases)
    image.load = _counted(image.load, counter, "image.load", a.top)
    pidfile = os.path.join(os.path.dirname(os.path.abspath(a.images)), f"opcodes-{os.getpid()}.pid")
    pid = os.fork()
    if pid == 0:   # (cli.main ends its process: in a child, so that the tree is killed below)
        sys.stdout = open(os.devnull, "w")
        os._exit(cli.main(["restore", "-D", a.images, "--pidfile", pidfile,
                           # scale.py's trees bind the host's /usr and /etc as externals
                           "--external", "mnt[usr]:/usr", "--external", "mnt[etc]:/etc"]))
    _, status = os.waitpid(pid, 0)
    if os.path.exists(pidfile):
        with open(pidfile) as f:
            os.kill(int(f.read().split()[0]), signal.SIGKILL)
        os.unlink(pidfile)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
