"""The leak guard: a mount that appears after the session started is reported by name.

Nothing here mounts on the host: the comparisons run on made-up mountinfo
text, in a forked child's private mount namespace, or in a pytest session
started inside `unshare -m --propagation private`.
"""

import os
import shutil
import sys

import pytest

from engine import forkrun, kernel
from zdtm import leakguard

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

START = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
"""


def test_leaked_on_made_up_tables():
    end = START + "99 22 0:50 / /mnt/leak rw shared:7 - tmpfs zdtm-leak rw\n"
    leaks = leakguard.leaked(START, end)
    assert [m.mountpoint for m in leaks] == ["/mnt/leak"]
    assert "leaked mount: /mnt/leak (tmpfs zdtm-leak" in leakguard.describe(leaks)
    assert leakguard.leaked(START, START) == []
    # An unmount is not a leak; a reused id on another mountpoint is.
    assert leakguard.leaked(START, START.splitlines(True)[0]) == []
    reused = START.replace("/proc rw", "/elsewhere rw")
    assert [m.mountpoint for m in leakguard.leaked(START, reused)] == ["/elsewhere"]


def _guard_in_private_ns():
    guard = leakguard.Guard()
    before = guard.check()
    kernel.mount("zdtm-leak", "/mnt", "tmpfs", 0)  # private namespace of a forked child
    return before, [(m.mountpoint, m.source) for m in guard.check()]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a mount namespace")
def test_guard_catches_a_mount_in_its_namespace():
    before, after = forkrun.in_mount_ns(_guard_in_private_ns)
    assert before == []
    assert after == [("/mnt", "zdtm-leak")]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare to run a session in a private mount namespace")
def test_session_with_a_leaking_fixture_fails_and_names_the_mount(pytester):
    pytester.makeconftest('pytest_plugins = ["zdtm.plugin"]\n')
    pytester.makepyfile(test_leaky='''
import subprocess, pytest

@pytest.fixture
def leaky():
    # Runs inside the session's private mount namespace (see the caller); never unmounted.
    subprocess.run(["mount", "-t", "tmpfs", "zdtm-deliberate-leak", "/mnt"], check=True)
    yield

def test_uses_leaky(leaky):
    assert True
''')
    env_path = PROJECT + os.pathsep + os.environ.get("PYTHONPATH", "")
    result = pytester.run("env", f"PYTHONPATH={env_path}", "unshare", "-m", "--propagation", "private",
                          sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", timeout=120)
    out = result.stdout.str()
    assert "1 passed" in out
    assert "LEAKED MOUNTS" in out
    assert "leaked mount: /mnt (tmpfs zdtm-deliberate-leak" in out
    assert result.ret == 1
