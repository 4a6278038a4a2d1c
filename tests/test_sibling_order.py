"""Siblings in the order they were made (start time, then pid), in dump's tree (engine/freeze.py
process_tree) and in the runner's snapshot (zdtm/snapshot.py tree_pids): ordered by pid, a tree
whose pids wrapped between two forks (pid_max is 32768 on a busy host) was listed in another order
than its restored copy, and the snapshot paired processes with the wrong originals."""

from __future__ import annotations

import json
import subprocess
import sys

from enginecase import PROJECT_ROOT

# As pid 1 of a new pid namespace (its /proc that namespace's): a child made at pid 501, then,
# later, one at pid 101, as when pids wrap; both listings must give 501 first.
SCRIPT = """
import json, os, time
from engine import freeze
from zdtm.snapshot import tree_pids
def fork_at(last):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(last))
    pid = os.fork()
    if pid == 0:
        time.sleep(1000)
        os._exit(0)
    return pid
kids = [fork_at(500)]
time.sleep(0.1)   # (a later start time: ticks are 10 ms)
kids.append(fork_at(100))
print(json.dumps([kids, tree_pids(1)[1:], [p for p, _ in freeze.process_tree(1)[1:]]]))
"""


def test_siblings_listed_in_the_order_they_were_made():
    r = subprocess.run(["unshare", "-pf", "--mount-proc", sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT,
                       env={"PYTHONPATH": PROJECT_ROOT, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    made, snapshot, dump = json.loads(r.stdout)
    assert made == [501, 101], r.stdout
    assert snapshot == made and dump == made, r.stdout
