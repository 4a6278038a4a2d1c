"""Atomic dump: SIGKILL `mntcr dump` at random moments; no directory restore would accept is left.

The image is written to a temporary directory and renamed into place at the
end, so after a kill at any moment either the target does not exist (and
whatever temporary directory is left is refused by `engine.image.load`), or
the rename happened and the target is a complete image that restores.

Delays are drawn from a seeded RNG (seed printed on failure, MNTCR_KILL_SEED
to replay) over the dump's measured duration, so kills land in every phase:
process discovery, inspection, archiving, writing the manifest, renaming.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from engine import image
from zdtm import leakguard, snapshot
from zdtm.flavors.ns import NsFlavor
from zdtm.scenario import Expectation, Requires, Scenario

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLS = int(os.environ.get("MNTCR_KILLS", "12"))
SEED = int(os.environ.get("MNTCR_KILL_SEED", str(int(time.time()) % 100000)))

# Enough superblocks and files that the dump spends real time archiving.
SETUP = """
mount -t tmpfs t /mnt
for i in 1 2 3 4 5 6 7 8; do
  mkdir -p /mnt/d$i
  mount -t tmpfs t$i /mnt/d$i
  dd if=/dev/zero of=/mnt/d$i/blob bs=64k count=16 2>/dev/null
  mkdir /mnt/d$i/sub
  mount --bind /mnt/d$i/sub /mnt/d$i/sub
done
mount --make-rshared /mnt
exec 5</mnt/d1/blob
exec zdtm-hold
"""


def _scenario() -> Scenario:
    return Scenario(path="<tests/test_hardening_dump_kill.py>", name="dump_kill", params={},
                    description="dump killed at random moments", setup=SETUP, check=None, requires=Requires(),
                    expect={"*": Expectation("pass")}, flavors=("ns",), timeout=60.0, iters=1)


def _env():
    return dict(os.environ, PYTHONPATH=PROJECT_ROOT)


def _dump_cmd(pid: int, img: str, externals) -> list[str]:
    ext = [a for e in externals for a in ("--external", f"mnt[{e.mountpoint}]:{e.key}")]
    return [sys.executable, "-m", "engine.cli", "dump", "-t", str(pid), "-D", img, *ext]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _accepted(path: str) -> bool:
    try:
        image.load(path)
        return True
    except (image.ImageError, OSError):
        return False


def _check_leftovers(parent: str, target: str, externals, workdir: str) -> str:
    """Every directory restore accepts must be the complete target; return what was found."""
    found = "nothing"
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not os.path.isdir(path):
            continue
        if path != target:
            assert not _accepted(path), f"a killed dump left {name}, which restore accepts"
            found = f"temporary {name} (refused)"
            continue
        if not _accepted(path):
            assert not os.listdir(path), f"the target {name} exists, is refused, and is not empty"
            found = "empty target"
            continue
        # The rename happened: the image must be complete, i.e. restore works.
        pidfile = os.path.join(workdir, "restored.pid")
        ext = [a for e in externals for a in ("--external", f"mnt[{e.key}]:{e.host_path}")]
        r = subprocess.run([sys.executable, "-m", "engine.cli", "restore", "-D", path, "--pidfile", pidfile, *ext],
                           capture_output=True, text=True, env=_env(), cwd=PROJECT_ROOT, timeout=60)
        assert r.returncode == 0, f"a killed dump left an image restore accepts but cannot restore: {r.stderr}"
        with open(pidfile) as f:
            snapshot.kill_tree(int(f.read()))
        found = "complete image (restored)"
    return found


def _measure_dump(tmp_path) -> float:
    flavor = NsFlavor()
    work = str(tmp_path / "measure")
    running = flavor.start(_scenario(), work)
    try:
        t = time.monotonic()
        r = subprocess.run(_dump_cmd(running.pid, os.path.join(work, "img"), running.externals),
                           capture_output=True, text=True, env=_env(), cwd=PROJECT_ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        return time.monotonic() - t
    finally:
        flavor.stop(running)


def test_killed_dump_leaves_no_acceptable_partial_image(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (a throwaway container to dump)")
    duration = _measure_dump(tmp_path)
    rng = random.Random(SEED)
    guard = leakguard.Guard()
    seen = []
    for k in range(KILLS):
        delay = rng.uniform(0.0, duration * 1.1)
        flavor = NsFlavor()
        work = str(tmp_path / f"k{k}")
        running = flavor.start(_scenario(), work)
        parent = os.path.join(work, "images")
        os.makedirs(parent)
        target = os.path.join(parent, "img")
        try:
            p = subprocess.Popen(_dump_cmd(running.pid, target, running.externals), env=_env(), cwd=PROJECT_ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(delay)
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the dump and every helper it forked
            except ProcessLookupError:
                pass
            p.wait()
            found = _check_leftovers(parent, target, running.externals, work)
            seen.append(f"kill at {delay:.3f}s: {found}")
        finally:
            flavor.stop(running)
    leaked = guard.own_leaks(str(tmp_path))
    assert not leaked, leakguard.describe(leaked)
    print(f"seed {SEED}, dump takes {duration:.2f}s:\n" + "\n".join(seen))


def test_killed_dump_does_not_leave_the_tree_stopped(tmp_path):
    """The tree is SIGSTOPped during dump; SIGKILL of the `mntcr dump` process must not leave it frozen.

    Only the dump process is killed (what the OOM killer or `kill -9 PID` does); its watchdog child
    resumes the tree. (Killing the whole process group also kills the watchdog: see bugs.md.)
    """
    if os.geteuid() != 0:
        pytest.skip("needs root (a throwaway container to dump)")
    flavor = NsFlavor()
    work = str(tmp_path / "stop")
    running = flavor.start(_scenario(), work)
    try:
        p = subprocess.Popen(_dump_cmd(running.pid, os.path.join(work, "img"), running.externals), env=_env(),
                             cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        # Kill as soon as the dump has stopped the tree (it is then inspecting or archiving).
        deadline = time.monotonic() + 30
        while _state(running.pid) not in ("T", "t") and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert p.poll() is None, "the dump finished before it was seen stopping the tree"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 60  # the watchdog needs a moment to notice
        while any(_state(pid) in ("T", "t") for pid in snapshot.tree_pids(running.pid)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        states = {pid: _state(pid) for pid in snapshot.tree_pids(running.pid)}
        assert all(s not in ("T", "t") for s in states.values()), f"tree left stopped: {states}"
    finally:
        flavor.stop(running)
