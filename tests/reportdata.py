"""Made-up runs for the report tests: snapshots in the runner's format and kept report directories.

Two mount namespaces: the first has a shared /mnt overmounted by an
unbindable tmpfs (its read-only child is hidden beneath), a slave of the
group, an fd, the cwd, an fd on a detached mount and a mount point full of
markup; the second has a peer of /mnt and a slave of a group outside the tree.
"""

from __future__ import annotations

import json
import os

HOSTILE = "<script>console.error('escaped?')</script>&amp;\"'"

NS1 = "\n".join([
    "1 0 0:1 / / rw - tmpfs tmpfs rw",
    "2 1 0:2 / /mnt rw shared:10 - tmpfs a rw",
    "3 2 0:3 / /mnt/sub ro - tmpfs b rw",
    "4 2 0:4 / /mnt rw unbindable - tmpfs c rw",
    "5 1 0:5 / /srv rw master:10 - tmpfs e rw",
    "6 1 0:6 / /x<b>y</b>'\"& rw - tmpfs <i>evil</i> rw",
]) + "\n"
NS2 = "\n".join([
    "11 10 0:11 / / rw - tmpfs tmpfs rw",
    "12 11 0:2 / /peer rw shared:10 - tmpfs a rw",
    "13 11 0:7 / /s rw master:99 - tmpfs d rw",
]) + "\n"
TEXT1 = ("mounts:\n  (tree)\nroot: / mnt=/\ncwd: /mnt mnt=/mnt#2\n"
         "fd 0: /dev/null flags=0 pos=0 mnt=/\n"
         "fd 7: /mnt/f flags=0 pos=0 mnt=/mnt#2\n"
         f"fd 8: /gone{HOSTILE} flags=0 pos=0 mnt=detached\n")
TEXT2 = "mounts:\n  (tree)\nroot: / mnt=/\ncwd: / mnt=/\n"


def snapshot(ns1: str = NS1, check: str = "hello\n") -> dict:
    """A before.json-like dict with the two namespaces."""
    return {"procs": [{"pid": 100, "mountinfo": ns1, "text": TEXT1},
                      {"pid": 101, "mountinfo": NS2, "text": TEXT2}],
            "namespaces": "mnt: {P0} {P1}\npid: {P0,P1}", "cross_peers": "", "check_output": check}


def row(scenario: str = "scenarios/p/s.yaml", params: str = "", backend: str = "mntcr", outcome: str = "pass",
        kernel: str = "6.1", **extra) -> dict:
    """A result row as the plugin records it."""
    name = os.path.basename(scenario).removesuffix(".yaml")
    pid = "-".join(p for p in (params, backend, "ns") if p)
    nodeid = f"{scenario}::{name}[{pid}]"
    out = {"scenario": scenario, "params": params, "backend": backend, "flavor": "ns", "kernel": kernel,
           "expect": "pass", "description": "d", "outcome": outcome, "reason": "", "nodeid": nodeid,
           "timings": {"setup": 0.5, "dump": 1.0, "restore": 2.0, "compare": 0.25},
           "artifacts": nodeid.replace("/", "_").replace("::", "_").replace("[", "_").replace("]", "")}
    out.update(extra)
    return out


def keep(run_dir: str, r: dict, before: dict | None = None, after: dict | None = None) -> None:
    """Write the files a test kept (before.json always, after/logs when `after` is given)."""
    d = os.path.join(run_dir, r["artifacts"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "before.json"), "w") as f:
        json.dump(before or snapshot(), f)
    with open(os.path.join(d, "before.txt"), "w") as f:
        f.write("process P0:\n  x\n")
    if after is not None:
        with open(os.path.join(d, "after.0.json"), "w") as f:
            json.dump(after, f)
        with open(os.path.join(d, "after.0.txt"), "w") as f:
            f.write("process P0:\n  y\n")
        os.makedirs(os.path.join(d, "logs"))
        with open(os.path.join(d, "logs", "restore.iter0.log"), "w") as f:
            f.write("$ mntcr restore\n--- stdout\n--- stderr\nmntcr restore: /mnt: cannot make it shared\n")
        os.makedirs(os.path.join(d, "images.0"))
