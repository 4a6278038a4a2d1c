"""Files of /proc/N/: one whose process N has exited (CRIU's remap_dead_pid) is reopened at restore
while a child of restore's has number N in that pid namespace, which then exits, so the fd is on a
gone process's file again; one of a live process other than its namespace's init is refused at
dump, the tree left running (restore keeps no pid numbers)."""

from __future__ import annotations

import os
import re

import pytest

from enginecase import STOP_WATCH, case, py_hold, was_stopped  # noqa: F401  (fixture)

SETUP = py_hold("""
import signal, time
child = os.fork()
if child == 0:
    time.sleep(1000)
f = os.open(f"/proc/{child}/mountinfo", os.O_RDONLY)
os.kill(child, signal.SIGKILL); os.waitpid(child, 0)
os.dup2(f, 10); os.close(f)
""")


def test_fd_on_proc_dir_of_a_gone_process_is_restored(case):
    before, after = case.roundtrip(SETUP)
    link = os.readlink(f"/proc/{after.pid}/fd/10")
    assert re.fullmatch(r"/proc/\d+/mountinfo", link), link
    assert any(line.startswith(f"10: {link} ") for line in before.root.fds), (link, before.root.fds)
    n = link.split("/")[2]
    assert not os.path.exists(f"/proc/{after.pid}/root/proc/{n}"), "its process is there"


LIVE = py_hold("""
import time
child = os.fork()
if child == 0:
    os.dup2(os.open("/dev/null", os.O_RDWR), 1); os.dup2(1, 2)
    os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
os.dup2(os.open(f"/proc/{child}/status", os.O_RDONLY), 10)
""")


def test_fd_on_proc_dir_of_a_live_process_is_refused(case, tmp_path):
    # CRIU's fanotify00 keeps /proc/self/fdinfo/N open; restore reopened /proc/N/... by its number,
    # which names another process (or none) among the stand-ins.
    pid = case.start(LIVE)
    with pytest.raises(AssertionError) as err:
        case.dump(pid, str(tmp_path / "img"))
    assert "a file of process 2's /proc directory: restore keeps no pid numbers" in str(err.value)
    assert os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "T"


def test_fd_on_proc_dir_of_the_pid_namespace_init_is_restored(case):
    # pid 1 of a pid namespace made again is pid 1 again: its /proc/1/... names the same process.
    case.roundtrip(py_hold('os.dup2(os.open("/proc/1/task", os.O_RDONLY | os.O_DIRECTORY), 10)\n'))


def test_fd_on_the_proc_dir_itself_of_a_gone_process_is_restored(case):
    # CRIU's remap_dead_pid_root: /proc/N itself, which shows "(deleted)" once N is gone (no ghost
    # is made of it: proc holds none; the tree was refused before it was stopped).
    setup = py_hold("""
import signal, time
child = os.fork()
if child == 0:
    time.sleep(1000)
f = os.open(f"/proc/{child}", os.O_RDONLY | os.O_DIRECTORY)
os.kill(child, signal.SIGKILL); os.waitpid(child, 0)
os.dup2(f, 10); os.close(f)
""")
    before, after = case.roundtrip(setup)
    link = os.readlink(f"/proc/{after.pid}/fd/10")
    assert re.fullmatch(r"/proc/\d+ \(deleted\)", link), link
    assert any(line.startswith(f"10: {link}") for line in before.root.fds), (link, before.root.fds)


def test_cwd_in_the_proc_dir_of_a_gone_process_is_restored(case):
    # CRIU's unhashed_proc: the cwd is /proc/N of a process gone since (getcwd says ENOENT).
    setup = py_hold("""
import signal, time
child = os.fork()
if child == 0:
    time.sleep(1000)
os.chdir(f"/proc/{child}")
os.kill(child, signal.SIGKILL); os.waitpid(child, 0)
""")
    before, after = case.roundtrip(setup)
    cwd = os.readlink(f"/proc/{after.pid}/cwd")
    assert re.fullmatch(r"/proc/\d+ \(deleted\)", cwd), cwd
    assert cwd == os.readlink(f"/proc/{after.pid}/cwd") and before.root.cwd == after.root.cwd, cwd
