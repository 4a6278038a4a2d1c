"""Files of /proc/N/: one whose process N has exited (CRIU's remap_dead_pid) is reopened at restore
while a child of restore's has number N in that pid namespace, which then exits, so the fd is on a
gone process's file again; one of a live process of the tree (CRIU's fanotify00) is reopened under
the number the process restored for it has."""

from __future__ import annotations

import os
import re

import pytest

from enginecase import STOP_WATCH, case, py_hold, was_stopped  # noqa: F401  (fixture)
from zdtm.snapshot import tree_pids

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


# Process A (not the namespace's init) holds fd 11 on /proc/self/fdinfo/3 (its eventfd, CRIU's
# fanotify00) and fd 10 on /proc/B/uid_map of its child B.
LIVE = STOP_WATCH + py_hold("""
import ctypes, signal
a = os.fork()
if a == 0:
    os.dup2(os.open("/dev/null", os.O_RDWR), 0); os.dup2(0, 1); os.dup2(0, 2)
    b = os.fork()
    if b == 0:
        os.execv("/.hold/mntcr-hold", ["mntcr-hold", "100000"])
    os.dup2(os.eventfd(7), 3)
    os.dup2(os.open("/proc/self/fdinfo/3", os.O_RDONLY), 11)
    os.dup2(os.open(f"/proc/{b}/uid_map", os.O_RDONLY), 10)
    ctypes.CDLL(None).prctl(15, b"mntcr-hold", 0, 0, 0)
    while True:
        signal.pause()
""")


def test_fd_on_proc_dir_of_a_live_process_is_restored(case):
    # Reopened as /proc/M/... of the process restored for it, M its number now (restore keeps no pid
    # numbers); the snapshot names such a path <self> or <tree>.
    before, after = case.roundtrip(LIVE)
    a = next(p for p in tree_pids(after.pid) if os.path.exists(f"/proc/{p}/fd/11"))
    f11, f10 = (os.readlink(f"/proc/{a}/fd/{n}") for n in (11, 10))
    ns_pids = [int(line.split()[-1]) for line in open(f"/proc/{a}/status") if line.startswith("NSpid:")]
    assert f11 == f"/proc/{ns_pids[0]}/fdinfo/3", (f11, ns_pids)
    b = next(p for p in tree_pids(after.pid) if p != a and open(f"/proc/{p}/stat").read().split()[3] == str(a))
    b_ns = [int(line.split()[-1]) for line in open(f"/proc/{b}/status") if line.startswith("NSpid:")]
    assert f10 == f"/proc/{b_ns[0]}/uid_map", (f10, b_ns)
    assert "eventfd-count:" in open(f"/proc/{a}/fd/11").read()


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
