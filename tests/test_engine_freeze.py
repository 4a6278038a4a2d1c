"""engine/freeze.py's waits without a running tree: kill_all (dump's end) and wait_stopped."""

from __future__ import annotations

import os
import signal
import subprocess

from engine import freeze, kernel


def _state(pid: int) -> str:
    return freeze.state(pid)


def test_kill_all_returns_with_every_process_gone_or_a_zombie():
    """kill_all kills each process and returns once each has exited (a zombie here: the caller, its
    parent, has not reaped it), a pid already gone among them; a stopped one is killed too."""
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    try:
        os.kill(kids[1].pid, signal.SIGSTOP)
        gone = subprocess.Popen(["true"])
        gone.wait()
        freeze.kill_all([k.pid for k in kids] + [gone.pid])
        assert [_state(k.pid) for k in kids] == ["Z", "Z", "Z"]
    finally:
        for k in kids:
            k.kill()
            k.wait()
    assert all(k.returncode == -signal.SIGKILL for k in kids)


def test_wait_stopped_sees_each_process_stopped():
    """wait_stopped returns once each process shows T (its backoff starts at 0.1 ms)."""
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    try:
        freeze.signal_all([k.pid for k in kids], signal.SIGSTOP)
        freeze.wait_stopped([k.pid for k in kids])
        assert [_state(k.pid) for k in kids] == ["T", "T", "T"]
    finally:
        for k in kids:
            k.kill()
            k.wait()


def test_a_kernel_thread_is_refused_as_the_root():
    """A kernel thread (kthreadd, pid 2 of the host's pid namespace) is no process tree: dump says so
    in one line instead of failing at its first ptrace."""
    import pytest
    from engine.dumperror import DumpError
    kthread = next((int(n) for n in os.listdir("/proc") if n.isdigit() and _is_kthread(int(n))), None)
    if kthread is None:
        pytest.skip("no kernel thread is visible in this pid namespace's /proc")
    with pytest.raises(DumpError, match="is a kernel thread"):
        freeze.process_tree(kthread)
    assert freeze.process_tree(os.getpid())[0] == (os.getpid(), None)


def _is_kthread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return bool(int(data[data.rindex(b")") + 2:].split()[6]) & 0x00200000)


def test_dump_and_restore_refuse_a_proc_of_another_pid_namespace(tmp_path):
    """Run in a new pid namespace under the host's /proc (`unshare -p -f` without --mount-proc), the
    verbs would name other processes by their pids (a dump of pid 2 stopped at kthreadd, or hung):
    both refuse in one line before reading anything."""
    import sys
    mntcr = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin", "mntcr")
    script = (f"sleep 60 & {sys.executable} -S {mntcr} dump -t $! -D {tmp_path}/img; echo dump=$?; "
              f"{sys.executable} -S {mntcr} restore -D {tmp_path}/img; echo restore=$?; kill $! 2>/dev/null; true")
    out = subprocess.run(["unshare", "--pid", "--fork", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert "dump=2" in out.stdout and "restore=2" in out.stdout, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and all("/proc is not this pid namespace's proc" in l for l in lines), out.stderr
    assert not os.path.exists(f"{tmp_path}/img")


_THREAD_FORKS = """
import os, subprocess, sys, threading, time
kids = [subprocess.Popen(["sleep", "600"])]
def fork_in_thread():
    kids.append(subprocess.Popen(["sh", "-c", "sleep 600 & exec sleep 600"]))
t = threading.Thread(target=fork_in_thread)
t.start(); t.join()
time.sleep(0.02)
kids.append(subprocess.Popen(["sleep", "600"]))
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
print(" ".join(str(k.pid) for k in kids), flush=True)
sys.stdin.read()
"""


def _tree_with_thread_children():
    import sys
    p = subprocess.Popen([sys.executable, "-S", "-c", _THREAD_FORKS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    kids = [int(x) for x in p.stdout.readline().split()]
    for _ in range(500):   # (the sh's own child: forked once sh runs, then sh execs sleep)
        if len(freeze.process_tree(kids[1])) == 2 and kernel.read_comm(kids[1]) == "sleep":
            break
        import time
        time.sleep(0.01)
    return p, kids


def test_the_tree_from_children_lists_is_the_scans(monkeypatch):
    """process_tree reads each process's children from its threads' /proc children lists (a child
    forked by a thread other than the leader is listed by that thread): the same tree, in the same
    order, as the scan of every process of the host that a kernel without those lists gets."""
    p, kids = _tree_with_thread_children()
    try:
        listed = freeze.process_tree(p.pid)
        assert [q for q, _ in listed][:4] == [p.pid] + kids, listed
        assert len(listed) == 5 and listed[4][1] == kids[1], listed
        monkeypatch.setattr(freeze, "has_children_lists", lambda: False)
        assert freeze.process_tree(p.pid) == listed
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(kids[1])])
        for k in kids:
            os.kill(k, signal.SIGKILL)
        p.kill()
        p.wait()


def test_the_tree_reads_its_own_processes_not_the_hosts(monkeypatch):
    """A small tree's look opens the stat files of its own processes, not one of every process of
    the host (the scan grew with the host: 690 processes under a loaded test run)."""
    kid = subprocess.Popen(["sleep", "600"])
    host = sum(1 for n in os.listdir("/proc") if n.isdigit())
    opened = []
    real_open = os.open
    def counting(path, *a, **kw):
        if str(path).endswith("/stat"):
            opened.append(path)
        return real_open(path, *a, **kw)
    try:
        monkeypatch.setattr(os, "open", counting)
        tree = freeze.process_tree(os.getpid())
    finally:
        kid.kill()
        kid.wait()
    assert (kid.pid, os.getpid()) in tree
    assert host > 2 * len(tree) + 4, "the host shows too few processes for the count to tell"
    assert len(opened) <= 2 * len(tree), opened


def test_siblings_sort_in_the_order_they_were_made_across_a_pid_wrap(monkeypatch):
    """Siblings made within one clock tick sort by pid, unless pids wrapped within the tick: its
    pids then span more than half of pid_max and the low ones are the later; other ticks keep
    pid order whatever their spread (a tick apart, start time decides)."""
    monkeypatch.setattr(freeze, "_PID_MAX", 32768)
    assert freeze.fork_order([(5, 300), (5, 200)]) == [200, 300]
    assert freeze.fork_order([(5, 3), (5, 32760), (5, 301)]) == [32760, 3, 301]
    assert freeze.fork_order([(6, 3), (5, 32760), (7, 120), (7, 100)]) == [32760, 3, 100, 120]
    assert freeze.fork_order([]) == []
