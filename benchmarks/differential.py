"""Differential run against criu for a given time: random mount trees (zdtm/randomtree.py)
through mntcr and criu, each restore compared with its original; every new kind of
disagreement is shrunk by hypothesis and written as a scenario.

    python benchmarks/differential.py --minutes 60 --findings OUT/scenarios/findings [--seed N]
        [--max-ops 14] [--shrink-minutes 8] [--criu auto|trixie|sid|system|PATH] [--log FILE]

Each round is one hypothesis search (no example database, random unless --seed):
a tree whose verdict (zdtm/differential.py: criu-refuses, criu-differs,
criu-crash, mntcr) has a shape not seen before fails the property; hypothesis
then shrinks it, and only trees of that same shape count as failing while it
does (other new shapes are noted and found again later, or written unshrunk at
the end). Shrinking stops after --shrink-minutes (the smallest tree so far is
kept); a deletion pass (each op dropped once) follows, as hypothesis's own time
limit often stops it before it has dropped every op that does not matter. The shrunk tree is written as FINDINGS/<category>/<shape id>.yaml, a
scenario the runner loads when FINDINGS lies under a directory named
`scenarios` (`pytest OUT/scenarios/findings --backend criu`), and the next
round starts. Shapes already in FINDINGS count as known from the start.

Trees whose verdict is `environment` (criu could not run: a missing userland,
a capability) are counted and reported, never written as findings; the run
stops after 5 of them in a row. Every tree's verdict is one line of --log.
The output ends with the counts per category: trees (duplicates included),
distinct shapes, findings per hour, and the elapsed time. Exit status 1 when a
tree made mntcr fail (category `mntcr`: our bug).
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import signal
import sys
import time

_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _PROJECT)

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis.errors import Flaky  # noqa: E402

from zdtm import backends, differential, randomtree  # noqa: E402


class _Found(Exception):
    """The property's failure: a tree of the shape being shrunk."""


def _known_shapes(findings: str) -> set[str]:
    out = set()
    for path in glob.glob(os.path.join(findings, "*", "*.yaml")):
        with open(path) as f:
            m = re.search(r"^\s*shape: (.*)$", f.read(), re.M)
        if m:
            out.add(m.group(1).strip())
    return out


def _size(ops) -> tuple:
    return (len(ops), sum(i + j for _, i, j in ops), repr(ops))


class Run:
    """The state of one timed run: counts, known shapes, the shape being shrunk."""

    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.minutes * 60
        self.started = time.monotonic()
        self.known = _known_shapes(args.findings)
        self.criu = backends.create("criu", criu=args.criu)
        self.mntcr = backends.MntcrBackend(timeout=args.timeout)
        self.cache: dict = {}
        self.trees = 0
        self.rejected = 0
        self.by_category: dict[str, int] = {}
        self.shapes: dict[str, set] = {}
        self.pending: dict[str, differential.Verdict] = {}
        self.written: list[str] = []
        self.env_streak = 0
        self.target: str | None = None
        self.best: differential.Verdict | None = None
        self.target_since = 0.0
        self.log = open(args.log, "a") if args.log else None
        self.version = self.criu.impl().env().version()
        self.kernel = platform.release()

    def say(self, text: str) -> None:
        print(text, flush=True)
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()

    def verdict(self, ops) -> differential.Verdict | None:
        key = repr(ops)
        if key not in self.cache:
            try:
                v = differential.run_both(ops, self.args.timeout, self.criu, self.mntcr)
            except differential.SetupRejected:
                self.rejected += 1
                self.cache[key] = None
                return None
            self.cache[key] = v
            self.trees += 1
            cat = v.category or "agree"
            self.by_category[cat] = self.by_category.get(cat, 0) + 1
            if v.category:
                self.shapes.setdefault(v.category, set()).add(v.shape)
            self.env_streak = self.env_streak + 1 if cat == "environment" else 0
            elapsed = (time.monotonic() - self.started) / 60
            self.say(f"[{elapsed:6.1f} min] tree {self.trees} ({len(ops)} ops): {cat}"
                     + (f" | {v.shape[:160]}" if v.category else "")
                     + (f" | {v.criu.summary()[:160]}" if cat == "environment" else ""))
        return self.cache[key]

    def prop(self, ops) -> None:
        """The property hypothesis searches and shrinks: fails on the shape being shrunk."""
        ops = [tuple(o) for o in ops]
        # Hypothesis replays its final example: it must fail again (from the cache, below),
        # also once the time is up. Every failure is raised from one line: hypothesis tells
        # bugs apart by where they are raised.
        replay = self.best is not None and ops == self.best.ops
        if not replay and time.monotonic() > self.deadline:
            return
        if not replay and self.target and time.monotonic() - self.target_since > self.args.shrink_minutes * 60:
            return  # shrinking budget spent: the smallest tree so far is the finding
        if not replay and self.env_streak >= 5:
            return
        v = self.verdict(ops)
        assume(v is not None)
        if v.category in (None, "environment") or v.shape in self.known:
            return
        if self.target is None:
            self.target, self.target_since = v.shape, time.monotonic()
            self.say(f"  new shape ({v.category}), shrinking: {v.shape[:200]}")
        if v.shape != self.target:
            if v.shape not in self.pending or _size(ops) < _size(self.pending[v.shape].ops):
                self.pending[v.shape] = v
            return
        if self.best is None or _size(ops) < _size(self.best.ops):
            self.best = v
        raise _Found(v.shape)

    def round(self, seed: int | None) -> None:
        self.target, self.best = None, None
        test = given(ops=randomtree.ops_strategy(randomtree.kinds(), self.args.max_ops))(self.prop)
        test = settings(max_examples=self.args.examples, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                        print_blob=False)(test)
        if seed is not None:
            from hypothesis import seed as hseed
            test = hseed(seed)(test)
        try:
            test()
        except (_Found, Flaky):
            pass
        if self.best is not None:
            self.record(self.delete_pass(self.best), shrunk=True)

    def delete_pass(self, v: differential.Verdict) -> differential.Verdict:
        """Drop each op once, last first, keeping a drop that leaves the same shape.

        Hypothesis stops shrinking after its own time limit (5 min), at ~4 trees a minute
        on a loaded machine often before it has deleted the ops that do not matter; this
        pass costs one tree per op (at most --shrink-minutes more)."""
        until = time.monotonic() + self.args.shrink_minutes * 60
        ops = list(v.ops)
        for i in range(len(ops) - 1, -1, -1):
            if len(ops) == 1 or time.monotonic() > min(until, self.deadline + 600):
                break
            cand = ops[:i] + ops[i + 1:]
            w = self.verdict(cand)
            if w is not None and w.shape == v.shape:
                ops, v = cand, w
        return v

    def record(self, v: differential.Verdict, shrunk: bool) -> None:
        path = differential.write_finding(v, self.args.findings, self.version, self.kernel)
        self.known.add(v.shape)
        self.pending.pop(v.shape, None)
        self.written.append(path)
        self.say(f"  finding {'(shrunk)' if shrunk else '(NOT shrunk)'}: {path}: {len(v.ops)} ops {v.ops!r}\n"
                 f"    {v.criu.summary()[:300] if v.category != 'mntcr' else v.mntcr.summary()[:300]}")

    def report(self) -> None:
        hours = max((time.monotonic() - self.started) / 3600, 1e-9)
        self.say(f"\ncriu {self.version}, kernel {self.kernel}: {self.trees} trees in {hours * 60:.1f} min "
                 f"({self.trees / hours:.0f} trees/hour; {self.rejected} setups rejected)")
        self.say(f"{'category':<14} {'trees':>6} {'shapes':>7} {'trees/hour':>11} {'shapes/hour':>12}")
        for cat in ("agree",) + differential.CATEGORIES + ("environment",):
            n = self.by_category.get(cat, 0)
            s = len(self.shapes.get(cat, ()))
            self.say(f"{cat:<14} {n:>6} {s if cat != 'agree' else '-':>7} {n / hours:>11.1f} "
                     f"{(f'{s / hours:.1f}' if cat != 'agree' else '-'):>12}")
        self.say("findings written:\n" + "\n".join(f"  {p}" for p in self.written))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--findings", required=True, help="directory for the findings (a 'scenarios' dir beneath)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the first round (later rounds: seed+k)")
    ap.add_argument("--max-ops", type=int, default=14)
    ap.add_argument("--examples", type=int, default=300, help="trees per round at most")
    ap.add_argument("--shrink-minutes", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds for each setup, dump and restore")
    ap.add_argument("--criu", default="auto")
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("differential: needs root (throwaway namespaces and mounts); run it as root", file=sys.stderr)
        return 2
    os.makedirs(args.findings, exist_ok=True)
    crit = backends.create("criu", criu=args.criu).unavailable()
    if crit:
        print(f"differential: environment: criu cannot run here: {crit}", file=sys.stderr)
        return 2
    run = Run(args)

    def stop(signum, frame):
        # Finish the tree being run (its containers are stopped by the cycle), then report.
        run.deadline = 0
        run.say(f"signal {signum}: stopping after the current tree")
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    run.say(f"differential run: {args.minutes:g} min, criu {run.version}, kernel {run.kernel}, "
            f"{len(run.known)} known shapes in {args.findings}")
    k = 0
    while time.monotonic() < run.deadline and run.env_streak < 5:
        run.round(None if args.seed is None else args.seed + k)
        k += 1
    for v in list(run.pending.values()):
        if v.shape not in run.known:
            run.record(v, shrunk=False)
    if run.env_streak >= 5:
        run.say("stopped: 5 trees in a row could not run criu (environment, see above)")
    run.report()
    return 1 if run.by_category.get("mntcr") else 0


if __name__ == "__main__":
    sys.exit(main())
