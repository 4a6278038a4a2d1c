"""A busy loop that vforks its commands, dumped while it runs (engine/prestop.py `_check_vfork`,
engine/freeze.py `finish_vforks`). dash vforks each external command: its parent waits in vfork,
uninterruptibly, until the child execs. Until session 28 a dump that met that wait refused the
tree ("in an uninterruptible wait ... dump again"): CI saw it on a shell loop under load."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest

from enginecase import case  # noqa: F401  (fixture)
from enginecase import DUMP_EXTERNALS, mntcr

# A parent that vforks forever; each child spins 300 ms before its exec, so the parent is nearly
# always in the vfork wait: the dump's stop finds it there, with a child the dump stopped before
# its exec.
_SLOW_EXEC_C = r"""
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
int main(void) {
    for (;;) {
        pid_t c = vfork();
        if (c == 0) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            do clock_gettime(CLOCK_MONOTONIC, &b);
            while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 300000000L);
            execl("/bin/true", "true", (char *)0);
            _exit(127);
        }
        if (c > 0)
            waitpid(c, 0, 0);
    }
}
"""


def _dump_often(case, pid: int, times: int) -> None:
    """`times` dumps of the running tree at `pid` (--leave-running): each must succeed."""
    for n in range(times):
        images = case.new_images_dir()
        r = mntcr("dump", "-t", str(pid), "-D", images, "--leave-running", *DUMP_EXTERNALS)
        assert r.returncode == 0, f"dump {n}: {r.stderr}"
        with open(os.path.join(images, "mntcr.json")) as f:
            assert json.load(f)["processes"][0]["pid"] == pid


def test_shell_loop_of_external_commands(case):
    """`while :; do /bin/true; done` in dash: its shell spends much of its time in vfork; every dump
    succeeds (one in ~15 refused before), and the tree restores."""
    pid = case.start("exec sh -c 'while :; do /bin/true; done' </dev/null >/dev/null 2>&1\n",
                     daemons=("sh", "true"))
    _dump_often(case, pid, 25)
    restored = case.cr(pid)
    with open(f"/proc/{restored}/comm") as f:
        assert f.read().strip() == "sh"


def test_vfork_child_stopped_before_its_exec(case, tmp_path):
    """A parent nearly always in vfork, its child spinning before its exec: the stop catches the
    child before its exec; it runs on until its parent leaves the wait, and the dump succeeds
    (refused after the stop before: the parent never stopped)."""
    if not shutil.which("gcc"):
        pytest.skip("no C compiler here (gcc)")
    (tmp_path / "v.c").write_text(_SLOW_EXEC_C)
    r = subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "v"), str(tmp_path / "v.c")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    blob = base64.b64encode((tmp_path / "v").read_bytes()).decode()
    pid = case.start(f"echo {blob} | base64 -d > /tmp/v && chmod +x /tmp/v\n"
                     "exec /tmp/v </dev/null >/dev/null 2>&1\n", daemons=("v", "true"))
    _dump_often(case, pid, 6)
    restored = case.cr(pid)
    with open(f"/proc/{restored}/comm") as f:
        assert f.read().strip() == "v"
