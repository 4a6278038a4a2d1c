"""Building the criu userland (zdtm/criu_env.py) mounts nothing on the host.

debootstrap mounts proc and sys inside its target; the runner must keep those
mounts in a private mount namespace of their own. Each test runs the build in
a forked child with a private mount namespace and treats that namespace as
"the host": a build that mounts in its caller's namespace changes that table
(and the mount dies with the child, so a failing test leaves nothing behind).
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from engine import forkrun
from zdtm import criu_env, leakguard

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare (mount namespaces)")

# Stands in for debootstrap: mounts a tmpfs on TARGET/proc like the real one does, and then
# is "killed" before it could unmount it (it never unmounts); leaves a criu behind.
FAKE_DEBOOTSTRAP = """#!/bin/sh
eval target=\\${$(($# - 1))}
mkdir -p "$target/proc" "$target/usr/sbin"
mount -t tmpfs zdtm-fake-debootstrap "$target/proc"
printf '#!/bin/sh\\necho Version: 0.0\\n' > "$target/usr/sbin/criu"
chmod 755 "$target/usr/sbin/criu"
"""


def _build_and_compare(dest: str, path_env: str | None) -> tuple[str, str, list[str]]:
    """In the caller's (a private, throwaway) namespace: mountinfo before and after a build,
    and every mount point seen under dest's directory while it ran."""
    if path_env:
        os.environ["PATH"] = path_env
    before = leakguard.read_mountinfo()
    seen: set[str] = set()
    done = threading.Event()
    parent = os.path.dirname(dest)

    def watch():  # a mount that comes and goes during the build is a host mount too
        while not done.is_set():
            for line in leakguard.read_mountinfo().splitlines():
                fields = line.split()
                if len(fields) > 4 and fields[4].startswith(parent + "/"):
                    seen.add(fields[4])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        criu_env.build_userland("trixie", dest, log=open(os.devnull, "w"))
    finally:
        done.set()
        watcher.join()
    return before, leakguard.read_mountinfo(), sorted(seen)


def test_userland_build_mounts_nothing_in_the_callers_namespace(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "debootstrap"
    fake.write_text(FAKE_DEBOOTSTRAP)
    fake.chmod(0o755)
    dest = str(tmp_path / "cache" / "criu" / "trixie")
    before, after, seen = forkrun.in_mount_ns(_build_and_compare, dest,
                                              f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert seen == []
    assert leakguard.leaked(before, after) == [] and leakguard.gone(before, after) == []
    assert criu_env._userland_ready(dest)
    assert not [n for n in os.listdir(os.path.dirname(dest)) if ".tmp-" in n]


def test_a_killed_builds_directory_is_removed_by_the_next_build(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "debootstrap").write_text(FAKE_DEBOOTSTRAP)
    (bindir / "debootstrap").chmod(0o755)
    dest = tmp_path / "criu" / "trixie"
    stale = tmp_path / "criu" / "trixie.tmp-999999"
    (stale / "var").mkdir(parents=True)
    forkrun.in_mount_ns(_build_and_compare, str(dest), f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert not stale.exists()
    assert criu_env._userland_ready(str(dest))


def _first_criu_run(cache: str) -> tuple[str, str, list[str], float, str]:
    os.environ["MNTCR_CACHE"] = cache
    start = time.monotonic()
    before, after, seen = _build_and_compare(os.path.join(cache, "criu", "trixie"), None)
    env = criu_env.CriuEnv("trixie", criu_env._userland_criu(os.path.join(cache, "criu", "trixie")),
                           os.path.join(cache, "criu", "trixie"))
    version = env.version()
    return before, after, seen, time.monotonic() - start, version


@pytest.mark.slow
def test_real_userland_build_into_an_empty_cache_leaves_the_mount_table_alone(tmp_path):
    """The real debootstrap (network, about a minute or more): watched throughout the build."""
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
    before, after, seen, seconds, version = forkrun.in_mount_ns(_first_criu_run, str(tmp_path / "cache"))
    print(f"first criu run (debootstrap + criu --version): {seconds:.0f} s, criu {version}")
    assert seen == [], f"mounted under the cache during the build: {seen}"
    assert leakguard.leaked(before, after) == [] and leakguard.gone(before, after) == []
    assert version != "unknown"
