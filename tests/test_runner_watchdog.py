"""zdtm/watchdog.py: a runner killed without its teardown leaves no tree it started running."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from zdtm import snapshot

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare (a tree as pid 1 of its own pid namespace)")

# A runner that starts a tree (pid 1 of a pid namespace, with a child: it ignores SIGTERM, as the
# ns flavor's container and a restored root do), guards it, prints the pids and waits to be killed.
RUNNER = r"""
import os, subprocess, sys, time
from zdtm import snapshot, watchdog
p = subprocess.Popen(["unshare", "-pf", "--kill-child=SIGKILL", "sh", "-c", "sleep 1000 & exec sleep 1000"],
                     start_new_session=True)
deadline = time.monotonic() + 60
while len(snapshot.tree_pids(p.pid)) < 3 and time.monotonic() < deadline:
    time.sleep(0.02)
pids = snapshot.tree_pids(p.pid)
root = pids[1]   # unshare's child: pid 1 of the new namespace
watchdog.guard(root)
if len(sys.argv) > 1:   # also a tree that ends on its own first
    q = subprocess.Popen(["sleep", "0.1"]); watchdog.guard(q.pid); q.wait()
print(" ".join(map(str, pids)), flush=True)
time.sleep(1000)
"""


def _run(*args):
    p = subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    pids = [int(x) for x in p.stdout.readline().split()]
    assert len(pids) == 3, f"the runner did not start its tree: {pids}"
    return p, pids


def _gone(pids, timeout=60):   # (returns when they are gone: a loaded machine may take seconds)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(snapshot.alive(x) for x in pids):
            return True
        time.sleep(0.05)
    return False


def _cleanup(p, pids):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(60)
    for x in pids:
        try:
            os.kill(x, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_runner_leaves_no_tree(sig):
    p, pids = _run()
    try:
        os.killpg(p.pid, sig)   # the runner's whole group, as a CI timeout does
        p.wait(60)
        assert _gone(pids[1:]), "the guarded tree outlived its runner"
    finally:
        _cleanup(p, pids)


def test_without_the_watchdog_the_tree_would_stay():
    """The case the watchdog is for: pid 1 of a pid namespace ignores the group's SIGTERM."""
    p = subprocess.Popen(["unshare", "-pf", "sh", "-c", "exec sleep 1000"], start_new_session=True)
    pids = []
    try:
        deadline = time.monotonic() + 60
        while len(snapshot.tree_pids(p.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = snapshot.tree_pids(p.pid)
        os.killpg(p.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert snapshot.alive(pids[1])
    finally:
        _cleanup(p, pids)


def test_the_watchdog_forgets_trees_that_ended_and_ends_with_its_runner():
    p, pids = _run("and-one-that-ends")
    try:
        watchdogs = [c for c in snapshot._children(p.pid)
                     if "zdtm.watchdog" in open(f"/proc/{c}/cmdline").read()]
        assert len(watchdogs) == 1

        def pidfds():
            fds = os.listdir(f"/proc/{watchdogs[0]}/fd")
            return sum(os.readlink(f"/proc/{watchdogs[0]}/fd/{fd}") == "anon_inode:[pidfd]" for fd in fds)
        deadline = time.monotonic() + 60
        while pidfds() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pidfds() == 1   # the ended one was forgotten
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(60)
        assert _gone(pids[1:]) and _gone(watchdogs)
    finally:
        _cleanup(p, pids)
