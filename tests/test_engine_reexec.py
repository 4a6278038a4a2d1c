"""engine/reexec.py: a stand-in executes the interpreter again only where what it would read is the
host's, never beneath a mount (a restored tree's, maybe an image's) on the code's directories."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import os, socket, subprocess, sys
sys.path.insert(0, sys.argv[1])
from engine import reexec
target = os.path.join(reexec._CODE_DIRS[0], "json")
if sys.argv[2] == "mount":
    subprocess.run(["mount", "-t", "tmpfs", "image", target], check=True)
a, b = socket.socketpair()
a.close()   # (an executed stand-in finds its channel closed and exits 1)
reexec.into_userns(b.fileno())
print("returned", flush=True)
"""


def _run(how: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-S", "-c", _CHILD, ROOT, how],
                          capture_output=True, text=True, timeout=60)


def test_no_exec_beneath_a_mount_on_the_standard_library():
    """A mount on a package of the standard library (json, in a namespace of the test's own): the
    stand-in goes on as forked, it does not execute an interpreter that would import from there."""
    r = _run("mount")
    assert r.stdout.strip() == "returned", (r.returncode, r.stdout, r.stderr[-500:])


def test_exec_where_nothing_is_mounted_there():
    """The same without the mount: it executes again (the check above is not a blanket refusal)."""
    r = _run("plain")
    assert "returned" not in r.stdout and r.returncode == 1, (r.returncode, r.stdout, r.stderr[-500:])
