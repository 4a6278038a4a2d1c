"""A restore that itself runs with no_new_privs set (a sandbox or seccomp wrapper it was started
from) would hand that bit to every stand-in for good: an image whose process had it clear is
refused, with one line, before anything is made."""

from __future__ import annotations

import os
import subprocess
import sys

from enginecase import ENGINE_ROOT, RESTORE_EXTERNALS, case, py_hold  # noqa: F401  (fixture)


def test_restore_under_no_new_privs_refused(case):
    pid = case.start(py_hold(""))
    images = case.new_images_dir()
    case.dump(pid, images)
    pidfile = images.rstrip("/") + ".pid"
    r = subprocess.run(["setpriv", "--no-new-privs", sys.executable, "-m", "engine.cli", "restore", "-D", images,
                        *RESTORE_EXTERNALS, "--pidfile", pidfile], cwd=ENGINE_ROOT, capture_output=True,
                       text=True, timeout=120)
    if r.returncode == 0:   # (a restore that went through: its tree dies with the case)
        with open(pidfile) as f:
            case.trees.append(int(f.read()))
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "had no_new_privs clear, and this restore runs with it set" in lines[0], r.stderr
    assert not os.path.exists(pidfile)
