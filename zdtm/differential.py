"""Differential runs: one random mount tree (zdtm/randomtree.py) through mntcr and through
criu, each restore compared with its own original (zdtm/cycle.py, the canonical comparison),
and what the pair of outcomes means.

Each engine gets its own container built from the same setup (a dump kills the
tree). An engine's outcome is one of:

- ``pass``: restored, and the restored state equals the state before dump;
- ``refuses``: dump or restore exited with an error (its first error line);
- ``differs``: restored, but the state differs (the canonical diff);
- ``crash``: the engine died of a signal, or the restored tree was gone;
- ``hang``: the engine did not finish within the timeout;
- ``environment``: the engine could not be run here at all (no criu userland, a
  capability criu needs, a helper that failed before criu ran): never a finding.

`classify` turns the pair into a finding category (or None when both agree with
the original): ``mntcr`` (our engine fails where the tree is legal: our bug),
``criu-refuses``, ``criu-differs``, ``criu-crash`` (also hangs), or
``environment``. `shape` is the key under which duplicates collapse: the
category plus the diff's (or the error's) shape with paths and numbers elided.
`finding_yaml` writes a finding as a scenario the runner loads.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field

import yaml

from zdtm import cycle, randomtree
from zdtm.backends import BackendError
from zdtm.flavors import SetupError
from zdtm.flavors.ns import NsFlavor

CATEGORIES = ("criu-refuses", "criu-differs", "criu-crash", "mntcr")

# criu error lines that say the machine cannot run criu, not that criu refused the tree.
_ENV_ERRORS = re.compile(r"prlimit|CAP_SYS_RESOURCE|CAP_CHECKPOINT_RESTORE|Operation not permitted.*rlimit|"
                         r"can't find criu|no criu|userland", re.I)


class SetupRejected(Exception):
    """The setup itself failed or made too many mounts: the tree is not a test case."""


@dataclass
class EngineResult:
    """What one engine did with one tree."""

    engine: str
    outcome: str              # pass | refuses | differs | crash | hang | environment
    stage: str = ""           # dump | restore | compare
    error: str = ""           # the engine's first error line (refuses, crash, hang, environment)
    diff: str = ""            # the canonical diff report (differs)
    log: str | None = None

    def summary(self) -> str:
        """One line: the outcome and its reason."""
        if self.outcome == "pass":
            return f"{self.engine}: pass"
        lines = [line.strip() for line in self.diff.splitlines()]
        # the first differing attribute says most ("* options: ro -> rw"), else the first line
        what = self.error or next((line.lstrip("! ") for line in lines if line.startswith("!") and "* " in line),
                                  lines[0] if lines else "")
        return f"{self.engine}: {self.outcome} at {self.stage or '?'}: {what}"


@dataclass
class Verdict:
    """Both engines' results for one tree and what they mean."""

    ops: list
    mntcr: EngineResult
    criu: EngineResult
    category: str | None = None
    shape: str = ""
    extra: dict = field(default_factory=dict)


def _criu_outcome(message: str) -> tuple[str, str]:
    """(outcome, first error line) of a criu BackendError message (zdtm.backends.split_criu_error form)."""
    m = re.search(r"\(criu exit (-?\d+)\)\s*$", message)
    if "TimeoutExpired" in message or "timed out" in message:
        return "hang", message
    if not m:
        # Not criu's own exit: the adapter or the userland failed before criu ran.
        return "environment", message
    code = int(m.group(1))
    if _ENV_ERRORS.search(message):
        return "environment", message
    if code < 0 or code > 128:
        return "crash", message
    return "refuses", message


def _mntcr_outcome(message: str) -> tuple[str, str]:
    if "timed out" in message:
        return "hang", message
    if "Traceback" in message or "internal error" in message.lower():
        return "crash", message
    return "refuses", message


def run_engine(ops, backend, timeout: float, workdir: str) -> EngineResult:
    """Build the tree of `ops` in a fresh ns container, C/R it with `backend`, compare.

    Raises SetupRejected when the setup fails (the tree is not a test case)."""
    setup = randomtree.render_setup(ops)
    scen = randomtree.scenario(setup, timeout)
    flavor = NsFlavor()
    try:
        running = flavor.start(scen, workdir)
    except SetupError as e:
        raise SetupRejected(str(e).splitlines()[0] if str(e) else "setup failed") from None
    name = backend.name
    try:
        cycle.run(scen, backend, flavor, running, workdir)
        return EngineResult(name, "pass")
    except cycle.CycleFailure as e:
        text = str(e)
        if e.kind == "mismatch":
            return EngineResult(name, "differs", "compare", "", text.split(":\n", 1)[-1])
        if e.kind == "cr-error":
            m = re.match(r"^\S+ (dump|restore) failed \(iteration [^)]*\): (.*?)(?:\n\[log: (.*)\])?$", text, re.S)
            stage, msg, log = (m.group(1), m.group(2), m.group(3)) if m else ("", text, None)
            outcome, err = (_criu_outcome if name == "criu" else _mntcr_outcome)(msg)
            return EngineResult(name, outcome, stage, err.strip().splitlines()[0], "", log)
        # the restored tree could not be read (gone): the engine said yes but left nothing alive
        return EngineResult(name, "crash", "compare", text.strip().splitlines()[0])
    except BackendError as e:  # outside the cycle's handling (should not happen): keep it one line
        return EngineResult(name, "refuses", e.stage, str(e).splitlines()[0], "", e.log)
    finally:
        flavor.stop(running)


def classify(mntcr: EngineResult, criu: EngineResult) -> str | None:
    """The finding category of a pair of results, None when both restored the original."""
    if "environment" in (mntcr.outcome, criu.outcome):
        return "environment"
    if mntcr.outcome != "pass":
        return "mntcr"
    if criu.outcome == "pass":
        return None
    return {"refuses": "criu-refuses", "differs": "criu-differs"}.get(criu.outcome, "criu-crash")


_PATHS = re.compile(r"(?<![\w.])/[^\s,:;)}\]]*")
_NUMS = re.compile(r"\d+")
# Diff-report lines that carry the shape: attribute changes, mounts only on one side, and
# which part of the snapshot differs.
_SHAPE_LINE = re.compile(r"^\s*(!\s+\*\s+.*|[-+]\s.*|.*\b(differs?|differ)\b.*)$")


def _elide(text: str) -> str:
    return _NUMS.sub("N", _PATHS.sub("P", text)).strip()


def _tree_row(line: str) -> str:
    """A '-'/'+' row of the tree diff: its side and fstype (paths, sources and options elided)."""
    side = line.lstrip()[0]
    parts = line.split()
    fstype = next((p for p in parts if p in ("tmpfs", "overlay", "proc", "ext4", "xfs", "btrfs", "devtmpfs")), "?")
    return f"{side} {fstype} mount"


def shape(category: str | None, result: EngineResult) -> str:
    """The key under which findings of one kind collapse: category + the shape of the diff or error."""
    if category is None:
        return ""
    if result.outcome == "differs":
        keys = set()
        where = "mount"  # the root mount's attributes are told apart: a runtime's --root is special
        for line in result.diff.splitlines():
            s = line.strip()
            if s.startswith("!") and "*" in s:
                attr = s.split("*", 1)[1].strip()
                name, _, change = attr.partition(":")
                # Plain values (options, fstype) stay: "options: ro -> rw" is the finding.
                keys.add(f"{where} {name}: {_elide(change)}" if name in ("options", "superblock options",
                                                                         "fstype", "unbindable")
                         else f"{where} {name}")
            elif s.startswith("!"):
                target = s[1:].split()[0].lstrip("├└─│ ") if len(s.split()) > 1 else ""
                where = "root" if target == "/" else "mount"
            elif s[:2] in ("- ", "+ ") and not s.startswith(("--- ", "+++ ")) and "TARGET" not in s:
                keys.add(_tree_row(s) if line.startswith("  ") else f"{s[0]} line")
            elif s.startswith(("different:", "legend:", "A = ", "B = ")):
                continue  # the report's header: counts and names, not the shape
            elif re.search(r"\bdiffer", s) and not s.startswith(("!", "-", "+")):
                keys.add(_elide(re.sub(r"\(.*?\)", "", s)))
        return f"{category}|{result.engine}|" + ";".join(sorted(keys))
    err = re.sub(r"\[log: .*?\]", "", result.error)
    err = re.sub(r"\((criu/[\w./-]+):\d+\)", r"(\1)", err)
    return f"{category}|{result.engine}|{result.stage}|{_elide(err)}"


def shape_id(key: str) -> str:
    """A short stable name for a shape (the finding's file name)."""
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def run_both(ops, timeout: float, criu_backend, mntcr_backend, keep: str | None = None) -> Verdict:
    """Run `ops` through both engines, classify, and return the verdict (SetupRejected passes through)."""
    base = tempfile.mkdtemp(prefix="mntcr-diff-")
    try:
        results = {}
        for backend in (mntcr_backend, criu_backend):
            wd = os.path.join(base, backend.name)
            os.makedirs(wd)
            results[backend.name] = run_engine(ops, backend, timeout, wd)
        category = classify(results["mntcr"], results["criu"])
        decisive = results["mntcr"] if category == "mntcr" else results["criu"]
        verdict = Verdict(list(ops), results["mntcr"], results["criu"], category, shape(category, decisive))
        if keep and category:
            shutil.copytree(base, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("images.*"))
        return verdict
    finally:
        shutil.rmtree(base, ignore_errors=True)


def finding_yaml(verdict: Verdict, criu_version: str, kernel: str) -> str:
    """The finding as a scenario YAML (setup = the tree, expect = what criu does), with the
    diff or error, criu's version and the kernel in its description."""
    r = verdict.mntcr if verdict.category == "mntcr" else verdict.criu
    what = {"criu-refuses": "criu refuses this tree", "criu-differs": "criu restores a different tree",
            "criu-crash": "criu crashes or hangs on this tree",
            "mntcr": "mntcr fails on this tree (our bug)"}[verdict.category]
    body = r.diff.rstrip() if r.outcome == "differs" else r.error
    description = (f"Differential finding ({verdict.category}): {what}. Found by "
                   f"benchmarks/differential.py from random trees (zdtm/randomtree.py) and shrunk.\n"
                   f"criu {criu_version}, kernel {kernel}.\n"
                   f"{verdict.mntcr.summary()}\n{verdict.criu.summary()}\n"
                   f"shape: {verdict.shape}\nops: {verdict.ops!r}\n"
                   f"criu without the mntcr adapter: unshare -m --propagation private sh "
                   f"benchmarks/criu_by_hand.sh THIS.yaml\n\n{body}\n")
    reason = re.sub(r"\s*\[log: .*?\]", "", r.error or "differs")[:200]
    if verdict.category == "mntcr":
        expect = "pass"
    elif verdict.category == "criu-differs":
        what_differs = r.summary().split(f" at {r.stage}: ", 1)[-1].lstrip("* ")  # the first differing attribute
        expect = {"mntcr": "pass", "criu": {"differs": f"criu {criu_version}: {what_differs}"}}
    else:
        expect = {"mntcr": "pass", "criu": {"crfail": f"criu {criu_version}: {reason}"}}
    doc = {"description": description, "setup": randomtree.render_setup(verdict.ops),
           "check": randomtree.CHECK, "expect": expect, "flavors": ["ns"]}
    return yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=110,
                     allow_unicode=True)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (description, setup) as literal blocks: the finding reads like a scenario."""


def _str(dumper, text):
    # A literal block cannot hold trailing spaces on a line or tabs: those keep the quoted style.
    if "\n" in text and not re.search(r"[ \t]\n|\t", text):
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", text)


_BlockDumper.add_representer(str, _str)


def write_finding(verdict: Verdict, findings_dir: str, criu_version: str, kernel: str) -> str:
    """Write the finding under findings_dir/<category>/<shape id>.yaml; returns the path."""
    d = os.path.join(findings_dir, verdict.category)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, shape_id(verdict.shape) + ".yaml")
    with open(path, "w") as f:
        f.write(finding_yaml(verdict, criu_version, kernel))
    return path
